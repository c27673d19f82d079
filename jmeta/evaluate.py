"""Evaluation: fixed tasks from a key, one cached jitted evaluator run in chunks, mean ± 95% CI.

Every experiment scores a meta-learner the same way: adapt on each evaluation task's
support set for 0..``num_steps`` inner steps, measure the query metrics after each, and
report the mean and the 95% interval over tasks per step, as the few-shot literature does.

The jitted evaluator is cached per ``MetaLearner.evaluate`` function and number of steps
(weakly, so a meta-learner that is dropped takes its compiled code with it): scoring the
same meta-learner again, on new tasks of the same shape, does not compile again. Tasks
are evaluated ``chunk`` at a time to bound the memory of the adapted parameters.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterator, NamedTuple

import jax
import numpy as np

from jmeta.objective import MetaLearner
from jmeta.stats import mean_ci95
from jmeta.tasks.base import Task, TaskSampler, sample_tasks, validate_tasks
from jmeta.validation import check_non_negative_int, check_positive_int

_EVALUATORS: "weakref.WeakKeyDictionary[Callable, dict[int, Callable]]" = (
    weakref.WeakKeyDictionary()
)


class SampledTasks(NamedTuple):
    """``num_tasks`` evaluation tasks drawn from ``sampler`` and ``key``, ``chunk`` at a time.

    Chunk ``i`` starting at task ``s`` is ``sample_tasks(sampler, fold_in(key, s), size)``, so
    the tasks are fixed by the key whatever the machine, and never all held in memory at once.
    """

    sampler: TaskSampler
    key: jax.Array
    num_tasks: int
    chunk: int = 100

    def chunks(self) -> Iterator[Task]:
        starts = np.array_split(np.arange(self.num_tasks), max(1, self.num_tasks // self.chunk))
        for part in starts:
            yield sample_tasks(self.sampler, jax.random.fold_in(self.key, int(part[0])), len(part))


def evaluation_tasks(
    sampler: TaskSampler, key: jax.Array, num_tasks: int, *, chunk: int = 100
) -> SampledTasks:
    """Fixed evaluation tasks from a key (drawn lazily, ``chunk`` at a time); see
    ``SampledTasks``."""
    return SampledTasks(
        sampler, key, check_positive_int("num_tasks", num_tasks), check_positive_int("chunk", chunk)
    )


def make_evaluator(meta_learner: MetaLearner, num_steps: int) -> Callable:
    """The jitted ``(meta_params, tasks) -> {metric: (num_tasks, num_steps + 1)}``, built once
    per meta-learner and number of steps."""
    num_steps = check_non_negative_int("num_steps", num_steps)
    by_steps = _EVALUATORS.setdefault(meta_learner.evaluate, {})
    if num_steps not in by_steps:
        # The cached function reaches ``evaluate`` through a weak reference: a strong one
        # (a closure) would keep the dictionary's key alive and the cache would never let go.
        evaluate = weakref.ref(meta_learner.evaluate)
        by_steps[num_steps] = jax.jit(
            lambda meta_params, tasks: evaluate()(meta_params, tasks, num_steps)
        )
    return by_steps[num_steps]


def _task_chunks(tasks: Task, chunk: int) -> Iterator[Task]:
    validate_tasks(tasks)
    count = jax.tree_util.tree_leaves(tasks)[0].shape[0]
    if not chunk or chunk >= count:
        yield tasks
        return
    for start in range(0, count, chunk):
        yield jax.tree_util.tree_map(lambda leaf: leaf[start : start + chunk], tasks)


def evaluate(
    meta_learner: MetaLearner,
    meta_params,
    tasks: Task | SampledTasks,
    num_steps: int | None = None,
    *,
    chunk: int = 100,
) -> dict[str, np.ndarray]:
    """Per-task query metrics after 0..``num_steps`` inner steps.

    Args:
      meta_learner: any ``MetaLearner`` (MAML's family, a prototypical network, ...).
      meta_params: its meta-parameters.
      tasks: a batched ``Task`` or ``evaluation_tasks(...)``.
      num_steps: inner steps (default: the meta-learner's ``num_inner_steps``).
      chunk: tasks per evaluator call for a batched ``Task`` (``0``: all at once).

    Returns:
      ``{"loss": (num_tasks, num_steps + 1), "accuracy": ...}`` as NumPy arrays; column ``s``
      is after ``s`` inner steps (a prototypical network has one column).
    """
    steps = meta_learner.config.num_inner_steps if num_steps is None else num_steps
    evaluator = make_evaluator(meta_learner, steps)
    parts = (
        tasks.chunks()
        if isinstance(tasks, SampledTasks)
        else _task_chunks(tasks, check_non_negative_int("chunk", chunk))
    )
    results = [jax.tree_util.tree_map(np.asarray, evaluator(meta_params, part)) for part in parts]
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}


def summarise(values: np.ndarray) -> list[dict[str, float]]:
    """Mean and 95% interval over tasks of each column of ``(num_tasks, steps)`` values."""
    values = np.asarray(values)
    return [dict(zip(("mean", "ci95"), mean_ci95(values[:, s]))) for s in range(values.shape[1])]
