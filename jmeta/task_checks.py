"""Checks that tasks fit the base learners they are given to, before anything compiles.

``validate_tasks`` checks a task batch against itself (support against query, x against
y); ``make_task_check`` checks it against the learners: the per-example input shape each
learner was built for, the targets against the learner's outputs for the loss (MSE needs
the output's shape exactly, since ``(tasks, n)`` targets against ``(tasks, n, 1)`` outputs
broadcast to an ``n x n`` loss), and integer labels inside the number of classes. Shapes
are static, so the check also runs while a jitted function traces; values (label ranges,
NaN) are checked only for concrete arrays. Output shapes come from ``jax.eval_shape`` once
per input shape.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from jmeta.models import Learner
from jmeta.tasks.base import Task, validate_tasks

SINGLE_TASK_HINT = (
    "; it looks like one task where a batch of tasks is expected: stack tasks on a leading "
    "axis (jmeta.sample_tasks), or add one with jax.tree_util.tree_map(lambda a: a[None], task)"
)


def _output_example_shape(learner: Learner, x_example: tuple, dtype, split: str) -> tuple:
    """The per-example output shape of ``learner`` for inputs of per-example shape
    ``x_example``, or a ``ValueError`` naming the learner and the shape it could not take."""
    batch = jax.ShapeDtypeStruct((2, *x_example), dtype)
    try:
        out = jax.eval_shape(learner.apply_fn, learner.params, batch)
    except Exception as error:  # Flax's or XLA's shape errors for input the user chose
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"tasks.{split}.x has examples of shape {x_example}, which base learner "
            f"{learner.name!r} cannot take ({type(error).__name__}: {first_line})"
        ) from None
    return tuple(out.shape[1:])


def make_task_check(
    learners: Sequence[Learner], loss: str, *, classes: int | None = None
) -> Callable[..., None]:
    """``check(tasks, batched=True)`` for tasks given to a meta-learner over ``learners``.

    Args:
      learners: the base learners (or a prototypical network's embedding).
      loss: ``"mse"`` (targets must have the outputs' per-example shape) or ``"ce"``
        (integer labels, one per example, below the number of classes).
      classes: the number of classes for ``"ce"`` when the learners' outputs are not
        logits (a prototypical network's ways); default: the outputs' last axis.

    Raises ``ValueError`` naming the array, its shape and what was expected.
    """
    learners = tuple(learners)
    output_shapes: dict = {}

    def output_shape(learner_index: int, x_example: tuple, dtype, split: str) -> tuple:
        key = (learner_index, x_example, np.dtype(dtype).str)
        if key not in output_shapes:
            output_shapes[key] = _output_example_shape(
                learners[learner_index], x_example, dtype, split
            )
        return output_shapes[key]

    def check(tasks: Task, batched: bool = True) -> None:
        validate_tasks(tasks, batched=batched)
        lead = 1 if batched else 0
        for split in ("support", "query"):
            batch = getattr(tasks, split)
            x_shape, y_shape = tuple(np.shape(batch.x)), tuple(np.shape(batch.y))
            x_example, y_example = x_shape[lead + 1 :], y_shape[lead + 1 :]
            for index, learner in enumerate(learners):
                expected = getattr(learner, "input_shape", None)
                if expected is not None and x_example != tuple(expected):
                    hint = SINGLE_TASK_HINT if batched and x_shape[1:] == tuple(expected) else ""
                    raise ValueError(
                        f"tasks.{split}.x has examples of shape {x_example} (array shape "
                        f"{x_shape}) but base learner {learner.name!r} takes inputs of shape "
                        f"{tuple(expected)}{hint}"
                    )
                out_example = output_shape(index, x_example, batch.x.dtype, split)
                if loss == "mse" and y_example != out_example:
                    hint = SINGLE_TASK_HINT if batched and y_shape[1:] == out_example else ""
                    raise ValueError(
                        f"tasks.{split}.y has targets of shape {y_example} (array shape "
                        f"{y_shape}) but base learner {learner.name!r} outputs {out_example} "
                        f"per example; with loss='mse' they must match (a target array of "
                        f"shape (tasks, n) against outputs (tasks, n, 1) would broadcast to an "
                        f"n x n loss: reshape it to (tasks, n, 1)){hint}"
                    )
                if loss == "ce":
                    count = classes if classes is not None else (out_example or (None,))[-1]
                    _check_labels(split, batch.y, y_example, count)

    return check


def _check_labels(split: str, labels, y_example: tuple, count: int | None) -> None:
    """Integer labels of shape () per example, inside ``[0, count)`` when concrete."""
    name = f"tasks.{split}.y"
    if y_example != ():
        raise ValueError(
            f"{name} must hold one integer class label per example for loss='ce', got "
            f"labels of shape {y_example} per example (one-hot labels? pass their argmax)"
        )
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise ValueError(
            f"{name} must hold integer class labels for loss='ce', got dtype {labels.dtype}"
        )
    if count is None or isinstance(labels, jax.core.Tracer) or not hasattr(labels, "__array__"):
        return
    values = np.asarray(labels)
    if values.size and (values.min() < 0 or values.max() >= count):
        raise ValueError(
            f"{name} holds labels from {values.min()} to {values.max()}, but the learner "
            f"scores {count} classes: labels must lie in 0..{count - 1}"
        )
