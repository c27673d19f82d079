"""Experiment configs are dataclasses; this module overrides their fields from ``field=value`` text."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


def _parse(field: str, text: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item_kind, *_) = typing.get_args(kind) or (str,)
        return tuple(
            _parse(field, part.strip(), item_kind) for part in text.split(",") if part.strip()
        )
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

    Tuples are written comma-separated (``shots=5,10``). An unknown field, a missing ``=``
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
