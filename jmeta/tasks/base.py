"""The task pytree every sampler returns and every meta-objective consumes.

A task is two labelled batches, ``support`` (what the learner adapts on) and ``query``
(what the meta-objective scores). Samplers are pure ``key -> Task`` functions so that a
meta-batch is one ``vmap`` over split keys and never a Python loop.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jmeta.validation import check_finite, check_positive_int


class Batch(NamedTuple):
    """Inputs ``x`` and targets ``y`` with a leading example axis."""

    x: Any
    y: Any


class Task(NamedTuple):
    """One task: ``support`` to adapt on, ``query`` to evaluate the adapted learner on."""

    support: Batch
    query: Batch


TaskSampler = Callable[[jax.Array], Task]


def sample_tasks(sample_task: TaskSampler, key: jax.Array, num_tasks: int) -> Task:
    """Draws ``num_tasks`` independent tasks, stacked on a leading task axis.

    Args:
      sample_task: a pure ``key -> Task`` function.
      key: PRNG key; split once per task.
      num_tasks: the meta-batch size (static).

    Returns:
      A ``Task`` whose leaves have a leading axis of size ``num_tasks``.
    """
    num_tasks = check_positive_int("num_tasks", num_tasks)
    return jax.vmap(sample_task)(jax.random.split(key, num_tasks))


def validate_tasks(tasks: Task, *, batched: bool = True) -> None:
    """Checks a (concrete) task batch before it reaches a jitted function.

    Raises ``ValueError`` naming the offending field when support and query disagree on
    the number of tasks or on the feature shape, when a batch has no examples, or when
    any array holds NaN or infinity. Shapes are checked for tracers too (they are static),
    so the check also runs when a jitted function is traced; finiteness only for concrete
    arrays.
    """
    if not isinstance(tasks, Task):
        raise TypeError(
            f"tasks must be a jmeta Task(support=Batch, query=Batch), got {type(tasks).__name__}"
        )
    lead = 1 if batched else 0
    shapes = {
        f"{split}.{field}": np.shape(getattr(getattr(tasks, split), field))
        for split in ("support", "query")
        for field in ("x", "y")
    }
    for name, shape in shapes.items():
        if len(shape) < lead + 1:
            raise ValueError(
                f"tasks.{name} must have {'a task axis and ' if batched else ''}an example axis, "
                f"got shape {shape}"
            )
        if shape[lead] == 0:
            raise ValueError(f"tasks.{name} has no examples (shape {shape})")
    if batched:
        counts = {name: shape[0] for name, shape in shapes.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"support and query disagree on the number of tasks: {counts}")
    for split in ("support", "query"):
        x_shape, y_shape = shapes[f"{split}.x"], shapes[f"{split}.y"]
        if x_shape[lead] != y_shape[lead]:
            raise ValueError(
                f"tasks.{split}.x has {x_shape[lead]} examples but tasks.{split}.y has "
                f"{y_shape[lead]}"
            )
    for field in ("x", "y"):
        support_shape, query_shape = shapes[f"support.{field}"], shapes[f"query.{field}"]
        if support_shape[lead + 1 :] != query_shape[lead + 1 :]:
            raise ValueError(
                f"tasks.support.{field} has per-example shape {support_shape[lead + 1 :]} but "
                f"tasks.query.{field} has {query_shape[lead + 1 :]}; they must match"
            )
    for split in ("support", "query"):
        for field in ("x", "y"):
            value = getattr(getattr(tasks, split), field)
            if isinstance(value, jax.core.Tracer) or not hasattr(value, "__array__"):
                continue  # traced, or shapes only (jax.eval_shape)
            check_finite(f"tasks.{split}.{field}", value)
