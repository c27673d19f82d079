"""A run directory: the files every experiment leaves behind, and what lets it resume.

::

    DIR/config.json      experiment name and every config field
    DIR/metrics.jsonl    one JSON line per logged step ({"stage", "step", metrics...})
    DIR/results.json     the final numbers
    DIR/stages/*.json    results of finished stages (a resumed run skips them)
    DIR/checkpoints/*.npz the latest state of each unfinished training stage (and the one
                         before it, ``*.previous.npz``, should the latest be damaged)
    DIR/.lock            held (``flock``) by the one process writing the run

A resumed run drops the metrics lines logged after the checkpoint it restarts from, so
its ``metrics.jsonl`` ends the same as an uninterrupted run's.

With several processes (``jax.distributed``), process 0 alone writes the folder (its lock,
config, metrics, stage results and results); every process takes part in checkpoints,
which are then orbax checkpoints of the global state, ``checkpoints/STAGE-STEP.orbax``
(the newest two kept: orbax commits each by renaming a finished temporary folder, so a
crash leaves the one before). A run folder that must resume on several hosts lives on a
file system they all see.

A folder with nothing but a config and an empty metrics file holds no progress: a new run
may take it over, so a run refused by a check can be rerun with the corrected field. The
lock is an ``flock``, which the kernel drops when its process dies: a killed run never
leaves a lock that blocks its resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import jax

from jmeta.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_pytree,
    save_pytree,
)
from jmeta.errors import RunLockedError

_OWN_FILES = ("config.json", "metrics.jsonl", ".lock")


def _folder_error(path: str, error: OSError) -> ValueError:
    return ValueError(
        f"--out {path}: cannot write the run folder there ({error.strerror or error}); "
        "choose a folder you may write to"
    )


def read_json(path: str, what: str, advice: str) -> Any:
    """The JSON value in ``path``, or a ``ValueError`` naming the file, what is wrong with it
    and ``advice`` (what to do)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read ({error.strerror}); {advice}") from None
    if not text.strip():
        raise ValueError(f"{what} {path} is empty (cut off by a crash or a full disk?); {advice}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON ({error}); {advice}") from None


def read_run_record(path: str) -> dict:
    """The ``config.json`` record (``{"experiment", "config"}``) of run folder ``path``, or an
    error naming the file and saying the run cannot be resumed."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"--resume {path}: no config.json there, so there is no run to resume"
        )
    advice = "the run cannot be resumed; start a new one with another --out"
    saved = read_json(config_path, "the run's config", advice)
    if not isinstance(saved, dict) or not {"experiment", "config"} <= set(saved):
        raise ValueError(
            f"the run's config {config_path} lacks its experiment or config fields; {advice}"
        )
    return saved


def has_progress(path: str) -> bool:
    """Whether run folder ``path`` holds anything a run produced beyond its config: a metrics
    line, a stage result, a checkpoint, a result or any other file."""
    if not os.path.isdir(path):
        return False
    for name in os.listdir(path):
        if name == "metrics.jsonl":
            if os.path.getsize(os.path.join(path, name)) > 0:
                return True
        elif name not in _OWN_FILES and not name.startswith(".tmp-"):  # a write cut short
            return True
    return False


class RunDir:
    """Files of one experiment run (see the module docstring).

    Creating one takes the folder's lock; ``close`` (or leaving a ``with`` block) lets it
    go. Raises ``RunLockedError`` naming the process that holds it, ``FileExistsError`` for
    a folder that already holds progress (unless ``resume``) and ``ValueError`` for a folder
    that cannot be written or a damaged ``config.json``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        experiment: str,
        config: Any,
        *,
        resume: bool = False,
        writer: bool | None = None,
    ):
        self.path = os.fspath(path)
        # Process 0 of a jax.distributed run writes; the others only read what it wrote.
        self.writer = jax.process_index() == 0 if writer is None else bool(writer)
        self.experiment = experiment
        self.report = False  # one line per finished stage on the terminal (the command line)
        self.expected_stages = 0
        self.stages_started = 0
        self._lock = None
        self.created = False
        if not self.writer:
            return
        config_record = {"experiment": experiment, "config": _jsonable(dataclasses.asdict(config))}
        config_path = os.path.join(self.path, "config.json")
        if resume:
            # Read before the lock: a run writes its config.json once, atomically, at start.
            saved = read_run_record(self.path)
            self._take_lock()
            if saved != config_record:
                self.close()
                raise ValueError(
                    f"--resume {self.path}: the run was started with {saved}, not {config_record}"
                )
            self.created = False
            return
        self.created = not os.path.exists(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise _folder_error(self.path, error) from None
        if not os.path.isdir(self.path):
            raise ValueError(f"--out {self.path} is a file, not a folder; choose another --out")
        self._take_lock()
        if has_progress(self.path):
            self.close()
            raise FileExistsError(
                f"--out {self.path} already holds a run; pass --resume {self.path} "
                "to continue it or choose another --out"
            )
        try:
            atomic_write_json(config_path, config_record)
            atomic_write_text(self.metrics_path, "")
        except OSError as error:
            self.close()
            raise _folder_error(self.path, error) from None

    def _take_lock(self) -> None:
        import fcntl

        lock_path = os.path.join(self.path, ".lock")
        try:
            handle = open(lock_path, "a+")
        except OSError as error:
            raise _folder_error(self.path, error) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(
                f"run folder {self.path} is being written by {holder}; wait for it to finish "
                "or stop it before resuming (a killed process holds no lock)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._lock = handle

    def close(self) -> None:
        """Lets the folder's lock go (the files stay)."""
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def discard_if_empty(self) -> bool:
        """Removes the folder's own files, and the folder if this run made it, when the run
        made no progress (it failed a check). Returns whether it did."""
        if not self.writer or has_progress(self.path):
            return False
        self.close()
        for name in _OWN_FILES:
            if os.path.exists(os.path.join(self.path, name)):
                os.unlink(os.path.join(self.path, name))
        if self.created and not os.listdir(self.path):
            os.rmdir(self.path)
        return True

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, "metrics.jsonl")

    def file(self, name: str) -> str:
        """Path of an output file in the run directory."""
        return os.path.join(self.path, name)

    def log(self, record: dict) -> None:
        """Appends one metrics line."""
        if not self.writer:
            return
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
        if not self.writer:
            return
        kept = [
            r for r in self.metrics() if not (r.get("stage") == stage and r.get("step", 0) > step)
        ]
        atomic_write_text(
            self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        )

    def checkpoint_path(self, stage: str) -> str:
        return os.path.join(self.path, "checkpoints", f"{stage}.npz")

    def previous_checkpoint_path(self, stage: str) -> str:
        return os.path.join(self.path, "checkpoints", f"{stage}.previous.npz")

    def save_checkpoint(self, stage: str, state: Any) -> None:
        """Saves ``state`` atomically, keeping the checkpoint it replaces as the previous one.

        Between the two moves only the previous checkpoint exists, which ``load_checkpoint``
        then restores: a crash at any instant leaves a checkpoint to resume from.
        """
        if jax.process_count() > 1:
            return self._save_global_checkpoint(stage, state)
        path, previous = self.checkpoint_path(stage), self.previous_checkpoint_path(stage)
        if os.path.exists(path):
            os.replace(path, previous)
        save_pytree(path, state)

    def _global_checkpoints(self, stage: str) -> list[tuple[int, str]]:
        """``(step, path)`` of the committed orbax checkpoints of ``stage``, oldest first."""
        folder, prefix = os.path.join(self.path, "checkpoints"), f"{stage}-"
        found = []
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            step = name[len(prefix) : -len(".orbax")]
            if name.startswith(prefix) and name.endswith(".orbax") and step.isdigit():
                found.append((int(step), os.path.join(folder, name)))
        return sorted(found)

    def _save_global_checkpoint(self, stage: str, state: Any) -> None:
        """Every process saves its part of ``state`` through orbax; process 0 then removes
        all but the newest two."""
        import orbax.checkpoint as ocp
        from jax.experimental import multihost_utils

        path = os.path.abspath(
            os.path.join(self.path, "checkpoints", f"{stage}-{int(state.step)}.orbax")
        )
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, state, force=True)
        checkpointer.wait_until_finished()
        multihost_utils.sync_global_devices(f"jmeta checkpoint {stage} {int(state.step)}")
        if self.writer:
            import shutil

            for _, old in self._global_checkpoints(stage)[:-2]:
                shutil.rmtree(old, ignore_errors=True)

    def _load_global_checkpoint(self, stage: str, like: Any) -> Any | None:
        import orbax.checkpoint as ocp

        found = self._global_checkpoints(stage)
        if not found:
            return None
        target = jax.tree_util.tree_map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), like
        )
        try:
            return ocp.StandardCheckpointer().restore(found[-1][1], target)
        except Exception as error:
            raise ValueError(
                f"checkpoint {found[-1][1]} is damaged ({type(error).__name__}: {error}); remove "
                f"it to resume from the one before: rm -r {found[-1][1]}"
            ) from None

    def load_checkpoint(self, stage: str, like: Any) -> Any | None:
        """The saved state of ``stage``, or None if it has none.

        A damaged checkpoint raises ``ValueError`` naming the file and what to do: remove it
        to resume from the previous checkpoint, or to rerun the stage.
        """
        if jax.process_count() > 1:
            return self._load_global_checkpoint(stage, like)
        path, previous = self.checkpoint_path(stage), self.previous_checkpoint_path(stage)
        if not os.path.exists(path):
            path = previous
            if not os.path.exists(path):
                return None
        try:
            return load_pytree(path, like)
        except ValueError:  # a checkpoint of another configuration: its message says so
            raise
        except Exception as error:  # BadZipFile, EOFError, a missing array, ...
            if path != previous and os.path.exists(previous):
                advice = (
                    f"remove it to resume from the previous checkpoint ({previous}): "
                    f"rm {path} && jmeta run --resume {self.path}"
                )
            else:
                advice = (
                    f"remove it to rerun stage {stage!r} from the start: "
                    f"rm {path} && jmeta run --resume {self.path}"
                )
            raise ValueError(
                f"checkpoint {path} is damaged ({type(error).__name__}: {error}); {advice}"
            ) from None

    def stage(self, name: str, compute: Callable[[], Any]) -> Any:
        """Returns the saved result of stage ``name``, or computes, saves and returns it."""
        path = os.path.join(self.path, "stages", f"{name}.json")
        if os.path.exists(path):
            return read_json(
                path,
                "stage result",
                f"remove it to rerun the stage: rm {path} && jmeta run --resume {self.path}",
            )
        began = time.monotonic()
        result = _jsonable(compute())
        if self.writer:
            atomic_write_json(path, result)
        self.say(f"{name}: done in {format_duration(time.monotonic() - began)}")
        return result

    def write_results(self, results: dict) -> None:
        if self.writer:
            atomic_write_json(self.file("results.json"), _jsonable(results))

    def expect_stages(self, count: int) -> None:
        """Announces how many training stages the run has, for "stage k of N" and the
        estimate of the whole run's time."""
        self.expected_stages = int(count)

    def begin_stage(self, name: str) -> str:
        """Counts a training stage as started; returns its label ``"[k/N] name"``."""
        self.stages_started += 1
        total = max(self.expected_stages, self.stages_started)
        return f"[{self.stages_started}/{total}] {name}" if self.expected_stages else name

    def stages_after_this(self) -> int:
        return max(0, self.expected_stages - self.stages_started)

    def say(self, line: str) -> None:
        """One line on the terminal for the command line's runs (stderr, beside the bars)."""
        if self.report and self.writer:
            print(line, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"`` or ``"1.2 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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
