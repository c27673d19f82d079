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

MAML++'s annealed settings (the multi-step loss, first-order steps first) depend on how far
meta-training has gone, so ``task_loss``, ``meta_loss`` and ``meta_grad`` take an optional
``progress`` (the fraction of the outer steps done, which ``make_meta_step`` passes when
``config.annealed``); without it they give the objective after annealing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.execution import CPU, Execution
from jmeta.implicit import make_implicit_adapt
from jmeta.inner import RATE_KINDS, REMAT_KINDS, init_log_rate, make_adapt
from jmeta.losses import LOSSES, get_loss
from jmeta.models import COMPUTE_DTYPES, Learner, computing_in, head_mask, norm_mask
from jmeta.strategy import ACTIVATIONS, combine_outputs
from jmeta.task_checks import make_task_check
from jmeta.tasks.base import Batch, Task, validate_tasks
from jmeta.validation import (
    check_choice,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)

META_GRADIENTS = ("second_order", "first_order", "reptile", "implicit")
OUTER_SCHEDULES = ("constant", "cosine")
# MAML++'s floor for the weight of each earlier step's loss, as a fraction of 1 / steps.
MULTI_STEP_FLOOR = 0.03


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
        gradient is a constant), ``"reptile"`` (``init - adapted`` as the update direction)
        or ``"implicit"`` (iMAML: the implicit gradient of the proximal inner problem's
        solution, ``jmeta.implicit``; needs ``proximal > 0`` and a fixed inner rate).
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
      proximal: lambda of the proximal term ``lambda/2 |phi - theta|^2`` the inner loop adds
        to the support loss (iMAML's regularisation strength); 0 adds none.
      cg_steps: conjugate-gradient iterations of the implicit meta-gradient.
      multi_step_loss: MAML++'s multi-step loss over the first ``multi_step_loss`` fraction
        of meta-training: the query losses after every inner step, weighted by
        ``multi_step_weights`` (uniform at the start, annealed toward the last step);
        afterwards, and at 0, the last step's loss alone.
      first_order_until: MAML++'s derivative-order annealing: the first
        ``first_order_until`` fraction of meta-training takes first-order meta-gradients,
        the rest second-order ones; 0 never does.
      per_step_norm: MAML++'s per-step batch-norm weights: every normalisation layer's
        scale and bias (leaves under a ``norm*`` module) are stored once per inner step and
        learned in the outer loop only. Batch statistics are each batch's own at every step
        (``TaskBatchNorm``), so they are per step already.
      outer_schedule: ``"constant"`` or ``"cosine"`` (MAML++: the outer rate follows a
        cosine from the optimizer's rate down to 1% of it over the run).
      curvature_steps: with ``n > 0``, each task's inner rate is at most ``1 / (proximal +
        h)``, ``h`` its support loss's largest Hessian eigenvalue at the initial weights
        (``n`` Lanczos iterations): gradient descent then cannot diverge on the proximal
        problem, which iMAML's meta-gradient assumes solved (``jmeta.inner``).
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
    proximal: float = 0.0
    cg_steps: int = 5
    multi_step_loss: float = 0.0
    first_order_until: float = 0.0
    per_step_norm: bool = False
    outer_schedule: str = "constant"
    curvature_steps: int = 0

    @property
    def annealed(self) -> bool:
        """Whether the objective or the outer rate changes with meta-training's progress
        (``make_meta_step`` then needs the run's length)."""
        return bool(self.multi_step_loss or self.first_order_until) or (
            self.outer_schedule != "constant"
        )

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
        check_choice("outer_schedule", self.outer_schedule, OUTER_SCHEDULES)
        check_non_negative_float("proximal", self.proximal)
        check_positive_int("cg_steps", self.cg_steps)
        check_non_negative_int("curvature_steps", self.curvature_steps)
        for name in ("multi_step_loss", "first_order_until"):
            value = getattr(self, name)
            if not 0 <= check_non_negative_float(name, value) <= 1:
                raise ValueError(f"{name} is a fraction of meta-training, 0 to 1; got {value!r}")
        if not isinstance(self.per_step_norm, bool):
            raise ValueError(f"per_step_norm must be True or False, got {self.per_step_norm!r}")
        if isinstance(self.freeze, str):
            raise ValueError(
                f"freeze must be a tuple of path prefixes, got the string {self.freeze!r}"
            )
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Refuses settings that would be silently ignored together."""
        if self.meta_gradient == "implicit":
            if not self.proximal:
                raise ValueError(
                    "meta_gradient='implicit' differentiates the solution of the proximal inner "
                    "problem and needs proximal > 0 (iMAML's lambda, e.g. 2.0); got proximal=0"
                )
            clashes = {
                "inner_rate": (self.inner_rate, "fixed"),
                "remat": (self.remat, "none"),
                "multi_step_loss": (self.multi_step_loss, 0.0),
                "first_order_until": (self.first_order_until, 0.0),
                "per_step_norm": (self.per_step_norm, False),
            }
            for name, (value, allowed) in clashes.items():
                if value != allowed:
                    raise ValueError(
                        f"meta_gradient='implicit' takes {name}={allowed!r}, got {value!r}: the "
                        "implicit gradient depends only on the inner problem's solution (not on "
                        "the rates or steps that reached it) and stores no steps to remat"
                    )
        if self.first_order_until and self.meta_gradient != "second_order":
            raise ValueError(
                f"first_order_until anneals first-order into second-order meta-gradients and "
                f"needs meta_gradient='second_order', got {self.meta_gradient!r}"
            )
        if self.meta_gradient == "reptile" and (self.multi_step_loss or self.per_step_norm):
            raise ValueError(
                "meta_gradient='reptile' moves the initial weights toward the adapted ones and "
                "takes neither multi_step_loss nor per_step_norm"
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
      task_loss: ``(meta_params, task, progress=None) -> (loss, metrics)`` for one task.
      meta_loss: ``(meta_params, tasks, progress=None) -> (loss, metrics)``, vmapped over
        tasks.
      meta_grad: ``(meta_params, tasks, progress=None) -> (grads, metrics)`` for the
        configured estimator. ``progress`` (the fraction of meta-training done) matters
        only for annealed configs (MAML++); ``None`` gives the objective after annealing.
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


def network_meta_params(params: Any) -> MetaParams:
    """The ``MetaParams`` of a meta-learner that learns one network and nothing else (no
    inner rate, no strategy): closed-form heads and the fine-tuning baseline."""
    return MetaParams((params,), (jnp.zeros(()),), jnp.zeros((1,)))


def network_trainable(meta_params: MetaParams) -> MetaParams:
    """``trainable`` for ``network_meta_params``: the network's leaves only."""
    return MetaParams(jax.tree_util.tree_map(lambda _: True, meta_params.learners), (False,), False)


def over_tasks(fn: Callable, chunk: int = 0) -> Callable:
    """The one vmap of the library: meta-parameters broadcast, tasks mapped.

    ``fn(meta_params, task, *rest)`` becomes ``(meta_params, tasks, *rest) -> outputs
    stacked over tasks``, ``rest`` (say the training progress) broadcast like the
    meta-parameters. With ``chunk > 0`` the vmap covers ``chunk`` tasks at a time inside a
    ``lax.map`` (a remainder that does not fill a chunk is vmapped on its own).
    """

    def vmapped(meta_params, tasks, *rest):
        return jax.vmap(fn, in_axes=(None, 0) + (None,) * len(rest))(meta_params, tasks, *rest)

    if not chunk:
        return vmapped

    def chunked(meta_params, tasks, *rest):
        if chunk >= jax.tree_util.tree_leaves(tasks)[0].shape[0]:
            return vmapped(meta_params, tasks, *rest)
        return jax.lax.map(lambda task: fn(meta_params, task, *rest), tasks, batch_size=chunk)

    return chunked


def mean_task_grad(
    task_loss: Callable, meta_loss: Callable, chunk: int = 0, check: Callable = validate_tasks
) -> Callable:
    """``(meta_params, tasks, *rest) -> (grads, metrics)``: the gradient of the task-mean
    loss (``rest``, such as the training progress, passed on to both losses).

    Without chunks it is the gradient of ``meta_loss``. With chunks each chunk is
    differentiated inside the ``lax.map`` and the per-task gradients are averaged: a
    gradient taken outside the map would keep every chunk's activations for one backward
    pass, which is the working set chunking is there to avoid (measured in
    ``experiments/results/BENCHMARK_NOTES.md``).
    """
    if not chunk:

        def grad_of_mean(meta_params, tasks, *rest):
            (_, metrics), grads = jax.value_and_grad(meta_loss, has_aux=True)(
                meta_params, tasks, *rest
            )
            return grads, metrics

        return grad_of_mean

    def mean_of_grads(meta_params, tasks, *rest):
        check(tasks)
        per_task = jax.value_and_grad(task_loss, has_aux=True)
        (_, metrics), grads = over_tasks(per_task, chunk)(meta_params, tasks, *rest)
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


def multi_step_weights(num_steps: int, annealed: jax.Array | float) -> jax.Array:
    """MAML++'s weights of the query losses after inner steps ``1..num_steps``.

    ``annealed`` runs from 0 (uniform weights) to 1, over which every earlier step's weight
    falls linearly to a floor of ``0.03 / num_steps`` and the last step's rises to take up
    the rest; from 1 on only the last step counts. The weights always sum to one (the same
    schedule as ``get_per_step_loss_importance_vector`` in Antoniou et al.'s code, with the
    epoch fraction as ``annealed``).
    """
    num_steps = check_positive_int("num_steps", num_steps)
    annealed = jnp.asarray(annealed, jnp.float32)
    floor = MULTI_STEP_FLOOR / num_steps
    earlier = jnp.maximum((1.0 - annealed) / num_steps, floor)
    last = jnp.minimum(
        (1.0 + annealed * (num_steps - 1)) / num_steps, 1.0 - (num_steps - 1) * floor
    )
    weights = jnp.concatenate([jnp.full((num_steps - 1,), earlier), last[None]])
    return jnp.where(annealed >= 1.0, jax.nn.one_hot(num_steps - 1, num_steps), weights)


def with_step_axis(params: Any, per_step: Any, num_steps: int) -> Any:
    """``params`` with every ``per_step`` leaf repeated on a new leading axis of
    ``num_steps + 1`` entries (entry ``t`` serves the network after ``t`` inner steps)."""
    if per_step is None:
        return params
    return jax.tree_util.tree_map(
        lambda p, m: jnp.broadcast_to(p, (num_steps + 1, *p.shape)) if m else p, params, per_step
    )


def _per_step_masks(learners: tuple[Learner, ...], config: MetaLearnerConfig):
    """The per-step leaves of each learner (``norm_mask``), or None without
    ``per_step_norm``; a learner with no normalisation layer is refused by name."""
    if not config.per_step_norm:
        return None
    masks = tuple(norm_mask(l.params) for l in learners)
    for learner, mask in zip(learners, masks):
        if not any(jax.tree_util.tree_leaves(mask)):
            raise ValueError(
                f"per_step_norm=True needs normalisation layers (parameters under a 'norm*' "
                f"module) but base learner {learner.name!r} has none (its parameters: "
                f"{', '.join(path_names(learner.params))}); set per_step_norm=False"
            )
    return masks


def _without(mask: Any, params: Any, excluded: Any) -> Any:
    """An adapt mask that leaves the ``excluded`` leaves out (``None``: all adapt)."""
    if excluded is None:
        return mask
    if mask is None:
        mask = jax.tree_util.tree_map(lambda _: True, params)
    return jax.tree_util.tree_map(lambda m, e: bool(m and not e), mask, excluded)


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
    per_step = _per_step_masks(learners, config)
    if per_step is not None:
        # MAML++ learns the per-step norm weights in the outer loop only.
        learners = tuple(
            l._replace(adapt_mask=_without(l.adapt_mask, l.params, m))
            for l, m in zip(learners, per_step)
        )
    for learner in learners:
        check_adapt_mask(learner)
    check_tasks = make_task_check(learners, config.loss)
    learners = tuple(computing_in(l, config.compute_dtype) for l in learners)

    loss_fn = get_loss(config.loss)
    steps = config.num_inner_steps

    def build_adapt(first_order: bool) -> Callable:
        return make_adapt(
            learners,
            loss_fn,
            config.inner_rate,
            first_order=first_order,
            remat=config.remat,
            fixed_lr=config.inner_lr if config.inner_rate == "fixed" else None,
            peel_first_step=execution.peel_first_step,
            proximal=config.proximal,
            per_step=per_step,
            curvature_steps=config.curvature_steps,
        )

    adapt_all = build_adapt(config.meta_gradient == "first_order")
    if config.meta_gradient == "implicit":
        adapt_all = make_implicit_adapt(
            adapt_all, learners, loss_fn, config.proximal, config.cg_steps
        )
    frozen_prefixes = tuple(config.freeze)
    if config.inner_rate == "fixed":
        frozen_prefixes += ("log_inner_lr",)
    if len(learners) == 1:
        frozen_prefixes += ("strategy",)

    def init() -> MetaParams:
        dtype = jax.tree_util.tree_leaves(learners[0].params)[0].dtype
        return MetaParams(
            learners=tuple(
                with_step_axis(l.params, m, steps)
                for l, m in zip(learners, per_step or (None,) * len(learners))
            ),
            log_inner_lr=tuple(
                init_log_rate(config.inner_rate, config.inner_lr, l, steps) for l in learners
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

    def adapt_with(adapt_fn: Callable) -> Callable:
        def adapt_unchecked(meta_params: MetaParams, support: Batch, num_steps=None, observe=None):
            # For the entry points below, which have checked their tasks already.
            count = steps if num_steps is None else check_positive_int("num_steps", num_steps)
            return adapt_fn(meta_params.learners, meta_params.log_inner_lr, support, count, observe)

        return adapt_unchecked

    adapt_unchecked = adapt_with(adapt_all)

    def adapt(meta_params: MetaParams, support: Batch, num_steps: int | None = None, observe=None):
        check_tasks(Task(support, support), batched=False)  # the support set as a task
        return adapt_unchecked(meta_params, support, num_steps, observe)

    def query_metrics(meta_params: MetaParams, params: tuple, query: Batch) -> dict:
        outputs = predict(meta_params, params, query.x)
        metrics = {"loss": loss_fn(outputs, query.y)}
        if config.loss == "ce":
            metrics["accuracy"] = jnp.mean(jnp.argmax(outputs, axis=-1) == query.y)
        return metrics

    def make_task_loss(adapt_fn: Callable) -> Callable:
        adapt_task = adapt_with(adapt_fn)

        def task_loss(meta_params: MetaParams, task: Task, progress=None):
            check_tasks(task, batched=False)
            if progress is None or not config.multi_step_loss:
                adapted, trace = adapt_task(meta_params, task.support)
                post = query_metrics(meta_params, adapted, task.query)
                loss = post["loss"]
            else:
                # The query loss after every inner step, weighted (MAML++'s multi-step loss).
                observe = lambda params: query_metrics(meta_params, params, task.query)["loss"]
                adapted, trace = adapt_task(meta_params, task.support, observe=observe)
                post = query_metrics(meta_params, adapted, task.query)
                after_each = jnp.concatenate([trace["observed"][1:], post["loss"][None]])
                weights = multi_step_weights(steps, progress / config.multi_step_loss)
                loss = jnp.sum(weights * after_each)
            metrics = {
                "inner/loss_first": trace["inner/loss"][0].mean(),
                "inner/loss_last": trace["inner/loss"][-1].mean(),
            }
            metrics.update({f"post/{k}": v for k, v in post.items()})
            return loss, metrics

        return task_loss

    task_loss = make_task_loss(adapt_all)

    def reptile_grad(meta_params: MetaParams, tasks: Task, progress=None):
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

    def mean_loss_of(loss: Callable) -> Callable:
        def mean_loss(meta_params: MetaParams, tasks: Task, *rest):
            check_tasks(tasks)
            losses, metrics = over_tasks(loss, execution.task_chunk)(meta_params, tasks, *rest)
            return losses.mean(), jax.tree_util.tree_map(jnp.mean, metrics)

        return mean_loss

    def grad_with(loss: Callable) -> Callable:
        return mean_task_grad(loss, mean_loss_of(loss), execution.task_chunk, check_tasks)

    def meta_loss(meta_params: MetaParams, tasks: Task, progress=None):
        return mean_loss_of(task_loss)(meta_params, tasks, *_given(progress))

    configured_grad = grad_with(task_loss)
    # Derivative-order annealing compiles both meta-gradients and picks one per step.
    first_order_grad = (
        grad_with(make_task_loss(build_adapt(True))) if config.first_order_until else None
    )

    def meta_grad(meta_params: MetaParams, tasks: Task, progress=None):
        if config.meta_gradient == "reptile":
            return reptile_grad(meta_params, tasks)
        if first_order_grad is None or progress is None:
            return configured_grad(meta_params, tasks, *_given(progress))
        return jax.lax.cond(
            progress < config.first_order_until,
            first_order_grad,
            configured_grad,
            meta_params,
            tasks,
            progress,
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


def _given(progress) -> tuple:
    """``(progress,)``, or nothing when there is none (the objective after annealing)."""
    return () if progress is None else (progress,)
