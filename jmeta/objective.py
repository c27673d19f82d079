"""The meta-objective: query loss after inner adaptation, as a pure function of meta-parameters.

``MetaParams`` is one pytree holding everything the outer loop may learn: the initial
weights of each base learner, their inner (log) learning rates and the learning-strategy
logits. Any part can be frozen by a path prefix (see ``MetaLearnerConfig.freeze``); freezing
happens in the optimizer, so frozen parts still get (unused) gradients and every part stays
differentiable for tests and analysis.

The single-task loss is written first and vmapped over the task axis in one place,
``over_tasks``, with meta-parameters broadcast and tasks mapped. How that vmap and the
inner scan are scheduled (tasks in chunks, the first inner step peeled) is a
``jmeta.execution.Execution`` passed beside the config: it changes speed, never a value.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.execution import CPU, Execution
from jmeta.inner import RATE_KINDS, REMAT_KINDS, init_log_rate, make_adapt
from jmeta.losses import LOSSES, get_loss
from jmeta.models import COMPUTE_DTYPES, Learner, computing_in, head_mask
from jmeta.strategy import ACTIVATIONS, combine_outputs
from jmeta.task_checks import make_task_check
from jmeta.tasks.base import Batch, Task, validate_tasks
from jmeta.validation import check_choice, check_positive_float, check_positive_int

META_GRADIENTS = ("second_order", "first_order", "reptile")


class MetaParams(NamedTuple):
    """Everything the outer loop learns, one entry per base learner in ``learners`` and
    ``log_inner_lr`` (the inner learning rates as logarithms, so no outer step makes one
    negative), and the learning-strategy logits."""

    learners: tuple
    log_inner_lr: tuple
    strategy: jax.Array


@dataclasses.dataclass(frozen=True)
class MetaLearnerConfig:
    """Hyper-parameters of a meta-learner; ``jmeta.algorithms`` names the usual settings.

    Attributes:
      num_inner_steps: inner SGD steps during meta-training (static).
      inner_lr: initial (or, with ``inner_rate="fixed"``, constant) inner learning rate.
      inner_rate: ``"fixed"``, ``"scalar"``, ``"per_param"`` or ``"per_step_layer"``.
      meta_gradient: ``"second_order"`` (MAML), ``"first_order"`` (FOMAML: the inner
        gradient is a constant) or ``"reptile"`` (``init - adapted`` as the update direction).
      adapt: ``"all"``, ``"head"`` (ANIL: only the ``head`` submodule adapts) or ``"body"``
        (BOIL: every parameter but the ``head`` adapts; the head moves only in the outer loop).
      loss: ``"mse"`` or ``"ce"``, used in both loops.
      activation: ``"softmax"`` or ``"sigmoid"`` for the learning strategy.
      remat: ``"none"``, ``"step"`` (``jax.checkpoint`` on each inner step) or
        ``"rollout"`` (memory constant in the number of steps, quadratic recompute); see
        ``jmeta.inner.make_adapt``.
      freeze: path prefixes of meta-parameters the outer loop leaves alone, e.g.
        ``("strategy",)``, ``("learners/0",)``, ``("log_inner_lr",)``. A fixed inner rate and
        the strategy of a single learner are always frozen.
      compute_dtype: ``"float32"`` or ``"bfloat16"``: the dtype of the base learners'
        forward (and backward) passes. Meta-parameters, adapted weights, inner updates,
        losses and optimizer state stay float32 (``jmeta.models.computing_in`` says why).
    """

    num_inner_steps: int = 1
    inner_lr: float = 0.01
    inner_rate: str = "fixed"
    meta_gradient: str = "second_order"
    adapt: str = "all"
    loss: str = "mse"
    activation: str = "softmax"
    remat: str = "none"
    freeze: tuple[str, ...] = ()
    compute_dtype: str = "float32"

    def __post_init__(self):
        check_positive_int("num_inner_steps", self.num_inner_steps)
        check_positive_float("inner_lr", self.inner_lr)
        check_choice("inner_rate", self.inner_rate, RATE_KINDS)
        check_choice("meta_gradient", self.meta_gradient, META_GRADIENTS)
        check_choice("adapt", self.adapt, ("all", "head", "body"))
        check_choice("remat", self.remat, REMAT_KINDS)
        check_choice("loss", self.loss, LOSSES)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        if isinstance(self.freeze, str):
            raise ValueError(
                f"freeze must be a tuple of path prefixes, got the string {self.freeze!r}"
            )


class MetaLearner(NamedTuple):
    """Pure functions of one meta-learner, built by ``make_meta_learner``.

    Attributes:
      config: the ``MetaLearnerConfig`` it was built from.
      execution: the ``Execution`` it runs with.
      learners: the base learners (their ``params`` are the initial meta-parameters).
      init: ``() -> MetaParams``.
      trainable: ``MetaParams -> pytree of bools``; ``False`` marks frozen leaves.
      adapt: ``(meta_params, support, num_steps) -> (adapted, trace)`` for one task.
      predict: ``(meta_params, adapted, x) -> outputs`` combined by the learning strategy.
      task_loss: ``(meta_params, task) -> (loss, metrics)`` for one task.
      meta_loss: ``(meta_params, tasks) -> (loss, metrics)``, vmapped over tasks.
      meta_grad: ``(meta_params, tasks) -> (grads, metrics)`` for the configured estimator.
      evaluate: ``(meta_params, tasks, num_steps) -> dict`` of per-task query metrics after
        0..num_steps inner steps, each of shape ``(num_tasks, num_steps + 1)``.
      check_tasks: ``(tasks, batched=True) -> None``; raises ``ValueError`` naming the array
        when tasks do not fit the learners (``jmeta.task_checks``). Every entry point above
        calls it; ``make_meta_step`` calls it on its sampler's output shapes.
    """

    config: MetaLearnerConfig
    execution: Execution
    learners: tuple
    init: Callable
    trainable: Callable
    adapt: Callable
    predict: Callable
    task_loss: Callable
    meta_loss: Callable
    meta_grad: Callable
    evaluate: Callable
    check_tasks: Callable | None = None


def over_tasks(fn: Callable, chunk: int = 0) -> Callable:
    """The one vmap of the library: meta-parameters broadcast, tasks mapped.

    ``fn(meta_params, task)`` becomes ``(meta_params, tasks) -> outputs stacked over tasks``.
    With ``chunk > 0`` the vmap covers ``chunk`` tasks at a time inside a ``lax.map``
    (a remainder that does not fill a chunk is vmapped on its own).
    """
    vmapped = jax.vmap(fn, in_axes=(None, 0))
    if not chunk:
        return vmapped

    def chunked(meta_params, tasks):
        if chunk >= jax.tree_util.tree_leaves(tasks)[0].shape[0]:
            return vmapped(meta_params, tasks)
        return jax.lax.map(lambda task: fn(meta_params, task), tasks, batch_size=chunk)

    return chunked


def mean_task_grad(
    task_loss: Callable, meta_loss: Callable, chunk: int = 0, check: Callable = validate_tasks
) -> Callable:
    """``(meta_params, tasks) -> (grads, metrics)``: the gradient of the task-mean loss.

    Without chunks it is the gradient of ``meta_loss``. With chunks each chunk is
    differentiated inside the ``lax.map`` and the per-task gradients are averaged: a
    gradient taken outside the map would keep every chunk's activations for one backward
    pass, which is the working set chunking is there to avoid (measured in
    ``experiments/results/BENCHMARK_NOTES.md``).
    """
    if not chunk:

        def grad_of_mean(meta_params, tasks):
            (_, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(meta_params, tasks)
            return grads, metrics

        return grad_of_mean

    def mean_of_grads(meta_params, tasks):
        check(tasks)
        per_task = jax.value_and_grad(task_loss, has_aux=True)
        (_, metrics), grads = over_tasks(per_task, chunk)(meta_params, tasks)
        mean = lambda leaf: jnp.mean(leaf, axis=0)
        return jax.tree_util.tree_map(mean, grads), jax.tree_util.tree_map(mean, metrics)

    return mean_of_grads


def path_names(tree: Any) -> list[str]:
    """The ``"learners/0/head/kernel"`` path of every leaf of ``tree``."""
    return [_path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def matches_prefix(name: str, prefix: str) -> bool:
    """Whether leaf path ``name`` lies under path prefix ``prefix``."""
    return name == prefix or name.startswith(prefix.rstrip("/") + "/")


def _valid_paths_text(names: list[str]) -> str:
    """The paths a prefix may name: every leaf, or for a large tree the groups down to the
    layers (``learners/0/conv_1``)."""
    if len(names) > 24:
        names = sorted({"/".join(name.split("/")[:3]) for name in names})
    prefixes = sorted({"/".join(n.split("/")[:depth]) for n in names for depth in (1, 2)})
    return ", ".join(dict.fromkeys(prefixes + names))


def check_freeze(freeze: tuple[str, ...], meta_params: Any) -> None:
    """Raises ``ValueError`` for a ``freeze`` prefix that matches no meta-parameter (a typo
    would otherwise freeze nothing and say nothing), listing the valid paths."""
    names = path_names(meta_params)
    for prefix in freeze:
        if not isinstance(prefix, str) or not any(matches_prefix(n, prefix) for n in names):
            raise ValueError(
                f"freeze path {prefix!r} matches no meta-parameter; valid paths: "
                f"{_valid_paths_text(names)}"
            )


def check_adapt_mask(learner: Learner) -> None:
    """Raises ``ValueError`` unless ``learner.adapt_mask`` is ``None`` or a tree of bools with
    the structure of its params holding at least one ``True``."""
    mask = learner.adapt_mask
    if mask is None:
        return
    names = path_names(learner.params)
    try:
        same = jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(learner.params)
    except Exception:
        same = False
    if not same:
        raise ValueError(
            f"adapt_mask of base learner {learner.name!r} must have the structure of its "
            f"params (one bool per leaf: {', '.join(names)}), got paths "
            f"{', '.join(path_names(mask)) or 'none'}"
        )
    leaves = jax.tree_util.tree_leaves(mask)
    if not all(isinstance(leaf, (bool, np.bool_)) for leaf in leaves):
        raise ValueError(
            f"adapt_mask of base learner {learner.name!r} must hold Python bools, got "
            f"{sorted({type(leaf).__name__ for leaf in leaves})}"
        )
    if not any(leaves):
        raise ValueError(
            f"adapt_mask of base learner {learner.name!r} adapts no parameter; mark at least "
            f"one of {', '.join(names)} True (or pass None to adapt all)"
        )


def _path_name(path) -> str:
    """``MetaParams`` key path as ``"learners/0/head/kernel"``."""
    parts = []
    for key in path:
        for attribute in ("name", "key", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return "/".join(parts)


def make_meta_learner(
    learners: Learner | tuple[Learner, ...] | list[Learner],
    config: MetaLearnerConfig = MetaLearnerConfig(),
    execution: Execution = CPU,
) -> MetaLearner:
    """Builds the pure functions of a meta-learner over one or more base learners.

    Args:
      learners: a ``Learner`` or a sequence of them; with several, their adapted outputs are
        combined by the learning strategy.
      config: a ``MetaLearnerConfig``: the algorithm.
      execution: a ``jmeta.execution.Execution`` (default ``CPU``): how XLA schedules it.

    Example::

      learner = jmeta.mlp_learner(jax.random.key(0))
      maml = jmeta.make_meta_learner(learner, jmeta.algorithm_config("maml"))
      loss, metrics = maml.meta_loss(maml.init(), tasks)
    """
    if isinstance(learners, Learner):
        learners = (learners,)
    learners = tuple(learners)
    if not learners:
        raise ValueError("learners must hold at least one base learner, got none")
    for learner in learners:
        if not isinstance(learner, Learner):
            raise TypeError(f"learners must be jmeta.Learner values, got {type(learner).__name__}")
    if config.adapt != "all":
        learners = tuple(l._replace(adapt_mask=head_mask(l.params, config.adapt)) for l in learners)
    for learner in learners:
        check_adapt_mask(learner)
    check_tasks = make_task_check(learners, config.loss)
    learners = tuple(computing_in(l, config.compute_dtype) for l in learners)

    loss_fn = get_loss(config.loss)
    adapt_all = make_adapt(
        learners,
        loss_fn,
        config.inner_rate,
        first_order=config.meta_gradient == "first_order",
        remat=config.remat,
        fixed_lr=config.inner_lr if config.inner_rate == "fixed" else None,
        peel_first_step=execution.peel_first_step,
    )
    frozen_prefixes = tuple(config.freeze)
    if config.inner_rate == "fixed":
        frozen_prefixes += ("log_inner_lr",)
    if len(learners) == 1:
        frozen_prefixes += ("strategy",)

    def init() -> MetaParams:
        dtype = jax.tree_util.tree_leaves(learners[0].params)[0].dtype
        return MetaParams(
            learners=tuple(l.params for l in learners),
            log_inner_lr=tuple(
                init_log_rate(config.inner_rate, config.inner_lr, l, config.num_inner_steps)
                for l in learners
            ),
            strategy=jnp.zeros((len(learners),), dtype),
        )

    def trainable(meta_params: MetaParams) -> Any:
        def is_trainable(path, _):
            name = _path_name(path)
            return not any(matches_prefix(name, p) for p in frozen_prefixes)

        return jax.tree_util.tree_map_with_path(is_trainable, meta_params)

    check_freeze(tuple(config.freeze), init())

    def predict(meta_params: MetaParams, adapted: tuple, x: jax.Array) -> jax.Array:
        outputs = [l.apply_fn(p, x) for l, p in zip(learners, adapted)]
        return combine_outputs(outputs, meta_params.strategy, config.activation, config.loss)

    def adapt_unchecked(meta_params: MetaParams, support: Batch, num_steps=None, observe=None):
        # For the entry points below, which have checked their tasks already.
        steps = (
            config.num_inner_steps
            if num_steps is None
            else check_positive_int("num_steps", num_steps)
        )
        return adapt_all(meta_params.learners, meta_params.log_inner_lr, support, steps, observe)

    def adapt(meta_params: MetaParams, support: Batch, num_steps: int | None = None, observe=None):
        check_tasks(Task(support, support), batched=False)  # the support set as a task
        return adapt_unchecked(meta_params, support, num_steps, observe)

    def query_metrics(meta_params: MetaParams, params: tuple, query: Batch) -> dict:
        outputs = predict(meta_params, params, query.x)
        metrics = {"loss": loss_fn(outputs, query.y)}
        if config.loss == "ce":
            metrics["accuracy"] = jnp.mean(jnp.argmax(outputs, axis=-1) == query.y)
        return metrics

    def task_loss(meta_params: MetaParams, task: Task):
        check_tasks(task, batched=False)
        adapted, trace = adapt_unchecked(meta_params, task.support)
        post = query_metrics(meta_params, adapted, task.query)
        metrics = {
            "inner/loss_first": trace["inner/loss"][0].mean(),
            "inner/loss_last": trace["inner/loss"][-1].mean(),
        }
        metrics.update({f"post/{k}": v for k, v in post.items()})
        return post["loss"], metrics

    def meta_loss(meta_params: MetaParams, tasks: Task):
        check_tasks(tasks)
        losses, metrics = over_tasks(task_loss, execution.task_chunk)(meta_params, tasks)
        return losses.mean(), jax.tree_util.tree_map(jnp.mean, metrics)

    def reptile_grad(meta_params: MetaParams, tasks: Task):
        check_tasks(tasks)

        def task_direction(meta_params, task):
            adapted, trace = adapt_unchecked(meta_params, task.support)
            post = query_metrics(meta_params, adapted, task.query)
            return adapted, {
                "inner/loss_first": trace["inner/loss"][0].mean(),
                "post/loss": post["loss"],
            }

        adapted, metrics = over_tasks(task_direction, execution.task_chunk)(meta_params, tasks)
        # Reptile moves the initialisation towards the adapted weights: init - mean(adapted)
        # plays the role of a gradient for the outer optimizer. Rates and strategy stay put.
        learner_grads = jax.tree_util.tree_map(
            lambda p, a: p - a.mean(axis=0), meta_params.learners, adapted
        )
        grads = MetaParams(
            learner_grads,
            jax.tree_util.tree_map(jnp.zeros_like, meta_params.log_inner_lr),
            jnp.zeros_like(meta_params.strategy),
        )
        return grads, jax.tree_util.tree_map(jnp.mean, metrics)

    def meta_grad(meta_params: MetaParams, tasks: Task):
        if config.meta_gradient == "reptile":
            return reptile_grad(meta_params, tasks)
        return mean_task_grad(task_loss, meta_loss, execution.task_chunk, check_tasks)(
            meta_params, tasks
        )

    def evaluate(meta_params: MetaParams, tasks: Task, num_steps: int) -> dict:
        check_tasks(tasks)

        def task_trajectory(meta_params, task):
            observe = lambda params: query_metrics(meta_params, params, task.query)
            adapted, trace = adapt_unchecked(meta_params, task.support, num_steps, observe)
            final = query_metrics(meta_params, adapted, task.query)
            return jax.tree_util.tree_map(
                lambda steps, last: jnp.concatenate([steps, last[None]]), trace["observed"], final
            )

        return over_tasks(task_trajectory, execution.task_chunk)(meta_params, tasks)

    return MetaLearner(
        config,
        execution,
        learners,
        init,
        trainable,
        adapt,
        predict,
        task_loss,
        meta_loss,
        meta_grad,
        evaluate,
        check_tasks,
    )
