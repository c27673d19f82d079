"""Input checks that fail early, on the host, with the parameter's name in the message.

Everything here runs before tracing so that a bad argument reads as a sentence rather
than as an XLA shape error from deep inside a jitted meta step.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def check_positive_int(name: str, value: Any) -> int:
    """Returns ``value`` as an int, or raises if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: Any) -> int:
    """Returns ``value`` as an int, or raises if it is not an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises if it is not a finite number > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def check_non_negative_float(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises if it is not a finite number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}") from None
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return number


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Raises unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(
            f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}"
        )
    return value


def check_finite(name: str, array: Any) -> None:
    """Raises if a concrete array holds NaN or infinity (a host-side check, not for use under
    jit)."""
    values = np.asarray(array)
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the data first"
        )


def check_fields(
    config: Any,
    *,
    positive_ints: Iterable[str] = (),
    non_negative_ints: Iterable[str] = (),
    positive_floats: Iterable[str] = (),
    at_least_two: Iterable[str] = (),
) -> None:
    """Checks an experiment's config fields by name before anything runs; a tuple-valued
    field (``shots=5,10``) is checked item by item. ``at_least_two`` is for counts such as
    ways or folds, where one is as meaningless as zero."""

    def values(name):
        value = getattr(config, name)
        return value if isinstance(value, tuple) else (value,)

    for name in positive_ints:
        for value in values(name):
            check_positive_int(name, value)
    for name in non_negative_ints:
        for value in values(name):
            check_non_negative_int(name, value)
    for name in positive_floats:
        for value in values(name):
            check_positive_float(name, value)
    for name in at_least_two:
        for value in values(name):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
