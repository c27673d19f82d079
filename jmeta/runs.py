"""A run directory: the files every experiment leaves behind, and what lets it resume.

::

    DIR/config.json      experiment name and every config field
    DIR/metrics.jsonl    one JSON line per logged step ({"stage", "step", metrics...})
    DIR/results.json     the final numbers
    DIR/stages/*.json    results of finished stages (a resumed run skips them)
    DIR/checkpoints/*.npz the latest state of each unfinished training stage

A resumed run drops the metrics lines logged after the checkpoint it restarts from, so
its ``metrics.jsonl`` ends the same as an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from jmeta.checkpoint import atomic_write_json, atomic_write_text, load_pytree, save_pytree


class RunDir:
    """Files of one experiment run (see the module docstring)."""

    def __init__(
        self, path: str | os.PathLike, experiment: str, config: Any, *, resume: bool = False
    ):
        self.path = os.fspath(path)
        self.experiment = experiment
        config_record = {"experiment": experiment, "config": _jsonable(dataclasses.asdict(config))}
        config_path = os.path.join(self.path, "config.json")
        if resume:
            if not os.path.exists(config_path):
                raise FileNotFoundError(
                    f"--resume {self.path}: no config.json there, so there is no run to resume"
                )
            with open(config_path) as f:
                saved = json.load(f)
            if saved != config_record:
                raise ValueError(
                    f"--resume {self.path}: the run was started with {saved}, not {config_record}"
                )
        else:
            if os.path.exists(config_path):
                raise FileExistsError(
                    f"--out {self.path} already holds a run; pass --resume {self.path} "
                    "to continue it or choose another --out"
                )
            os.makedirs(self.path, exist_ok=True)
            atomic_write_json(config_path, config_record)
            atomic_write_text(self.metrics_path, "")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, "metrics.jsonl")

    def file(self, name: str) -> str:
        """Path of an output file in the run directory."""
        return os.path.join(self.path, name)

    def log(self, record: dict) -> None:
        """Appends one metrics line."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        """All logged lines; a line cut off by a crash is ignored."""
        records = []
        with open(self.metrics_path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def rewind_metrics(self, stage: str, step: int) -> None:
        """Drops ``stage``'s lines after ``step`` (logged after the checkpoint being resumed)."""
        kept = [
            r for r in self.metrics() if not (r.get("stage") == stage and r.get("step", 0) > step)
        ]
        atomic_write_text(
            self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        )

    def checkpoint_path(self, stage: str) -> str:
        return os.path.join(self.path, "checkpoints", f"{stage}.npz")

    def save_checkpoint(self, stage: str, state: Any) -> None:
        save_pytree(self.checkpoint_path(stage), state)

    def load_checkpoint(self, stage: str, like: Any) -> Any | None:
        """The saved state of ``stage``, or None if it has none."""
        path = self.checkpoint_path(stage)
        return load_pytree(path, like) if os.path.exists(path) else None

    def stage(self, name: str, compute: Callable[[], Any]) -> Any:
        """Returns the saved result of stage ``name``, or computes, saves and returns it."""
        path = os.path.join(self.path, "stages", f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        result = _jsonable(compute())
        atomic_write_json(path, result)
        return result

    def write_results(self, results: dict) -> None:
        atomic_write_json(self.file("results.json"), _jsonable(results))


def _jsonable(value: Any) -> Any:
    """Converts tuples, numpy and JAX scalars/arrays to plain JSON values."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()
