"""Experiment configs are dataclasses: ``MetaTraining``, the settings every meta-training
experiment shares, and ``override`` / ``from_record``, which set their fields from
``field=value`` text and from a saved ``config.json``."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from jmeta.sharding import check_devices
from jmeta.training import check_schedule
from jmeta.validation import check_fields


@dataclasses.dataclass(frozen=True)
class MetaTraining:
    """The meta-training settings every meta-training experiment's config starts from.

    A config checks its fields when it is made (``check``, which subclasses extend), so a bad
    value on the command line fails by its name before any data is read or step compiled.

    Attributes:
      num_steps: outer steps.
      meta_batch: tasks per outer step.
      outer_lr: the outer optimizer's learning rate (Adam).
      seed: the base seed of the run.
      log_every: metrics are logged every ``log_every`` steps.
      checkpoint_every: the state is saved every ``checkpoint_every`` steps (a multiple of
        ``log_every``).
      devices: 1 trains on one device; ``n > 1`` splits each meta-batch over a mesh of the
        first ``n`` devices and 0 over all of them, every host's (``jmeta.sharding``);
        ``meta_batch`` must be a multiple of the count.
    """

    num_steps: int = 1000
    meta_batch: int = 4
    outer_lr: float = 0.001
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    devices: int = 1

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raises ``ValueError`` naming the first bad field."""
        check_fields(self, positive_ints=("num_steps", "meta_batch"), positive_floats=("outer_lr",))
        check_schedule(self.num_steps, self.log_every, self.checkpoint_every)
        check_devices(self.devices, meta_batch=self.meta_batch)


def _parse(field: str, text: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item_kind, *_) = typing.get_args(kind) or (str,)
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise ValueError(
                f"config field {field!r} is empty; give one value or several separated by commas"
            )
        if not all(parts):
            raise ValueError(f"config field {field!r} has an empty entry in {text!r}")
        values = tuple(_parse(field, part, item_kind) for part in parts)
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(
                f"config field {field!r} lists {', '.join(repeated)} more than once in {text!r}"
            )
        return values
    if not text.strip() and kind is not str:
        raise ValueError(f"config field {field!r} is empty; expected {kind.__name__}")
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config field {field!r} expects true or false, got {text!r}")
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(
                f"config field {field!r} expects {kind.__name__}, got {text!r}"
            ) from None
    raise ValueError(
        f"config field {field!r} has type {kind} which cannot be set from the command line"
    )


def override(config: Any, assignments: list[str]) -> Any:
    """Returns ``config`` with ``["field=value", ...]`` applied.

    Tuples are written comma-separated (``shots=5,10``). An unknown field, a missing ``=``,
    a field given twice, an empty value (``shots=``), an entry listed twice (``shots=5,5``)
    or a value of the wrong type raises ``ValueError`` naming the field and what it expects.
    """
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"expected field=value, got {assignment!r}")
        field, text = assignment.split("=", 1)
        if field not in names:
            raise ValueError(f"unknown config field {field!r}; expected one of {', '.join(names)}")
        if field in changes:
            raise ValueError(f"config field {field!r} is given twice; give it once")
        changes[field] = _parse(field, text, hints[field])
    return dataclasses.replace(config, **changes)


def from_record(config_class: type, values: dict) -> Any:
    """Rebuilds a config from its JSON record (lists back to tuples); unknown fields raise."""
    hints = typing.get_type_hints(config_class)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"saved config has unknown field(s) {unknown} for {config_class.__name__}")
    return config_class(
        **{k: tuple(v) if typing.get_origin(hints[k]) is tuple else v for k, v in values.items()}
    )
