"""The outer loop: an optax transformation over ``MetaParams``, one jitted step built once.

``make_meta_step`` closes over the meta-learner, the optimizer and the task sampler and
returns pure ``init`` / ``step`` / ``run`` functions in the way optax builds a
``GradientTransformation``. ``step(state, key)`` folds ``state.step`` into ``key`` so the
same base key can be passed at every call and no key is used twice. ``run`` scans
``num_steps`` steps inside one jitted call: on CPU this removes the Python dispatch that
otherwise dominates a small meta step such as sinusoid MAML.

With a ``mesh`` the meta-gradient runs under ``shard_map`` (``jmeta.sharding``): tasks are
drawn and differentiated on the device that owns them and one all-reduce averages the
gradient; the optimizer update that follows runs on replicated values, the same on every
device. Without one nothing changes.

An annealed config (MAML++: ``MetaLearnerConfig.annealed``) needs the run's length,
``num_steps``: each step passes ``progress = step / num_steps`` to the meta-gradient, and a
cosine outer schedule scales the optimizer's updates from 1 down to ``COSINE_FLOOR``.
Scaling the updates is scaling the rate for any optimizer whose update is proportional to
its rate (SGD, Adam and their relatives), so it also anneals an optimizer given by the user.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmeta.execution import CPU, Execution
from jmeta.objective import MetaLearner
from jmeta.sharding import check_mesh, put_replicated, replicated, sharded_task_gradient
from jmeta.tasks.base import Task, sample_tasks
from jmeta.validation import check_positive_float, check_positive_int

# MAML++'s cosine schedule ends at 1e-5 from an outer rate of 1e-3.
COSINE_FLOOR = 0.01


class MetaState(NamedTuple):
    """The whole state of meta-training."""

    meta_params: Any
    opt_state: Any
    step: jax.Array


class MetaStep(NamedTuple):
    """``init(meta_params) -> MetaState``; ``step(state, key) -> (state, metrics)``;
    ``run(state, key, num_steps) -> (state, metrics of every step)`` (``num_steps`` static;
    each metric stacked to shape ``(num_steps,)``, so a NaN is traced to its step);
    ``execution``: the meta-learner's, whose ``scan`` tells ``fit`` which of the two to call;
    ``mesh``: the one given to ``make_meta_step`` (``fit`` puts keys and restored states on it)."""

    init: Callable
    step: Callable
    run: Callable
    execution: Execution = CPU
    mesh: jax.sharding.Mesh | None = None


def default_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """Adam with ``eps_root > 0``: second-order meta-gradients differentiate through the
    square root of Adam's second moment, which is unbounded at zero otherwise (see optax.adam)."""
    if not callable(learning_rate):  # a schedule is a function of the step
        learning_rate = check_positive_float("learning_rate", learning_rate)
    return optax.adam(learning_rate, eps_root=1e-8)


def cosine_annealed(
    optimizer: optax.GradientTransformation, num_steps: int
) -> optax.GradientTransformation:
    """``optimizer`` with its updates scaled by a cosine from 1 at step 0 to ``COSINE_FLOOR``
    at ``num_steps`` (MAML++'s annealed outer rate)."""
    schedule = optax.cosine_decay_schedule(1.0, num_steps, alpha=COSINE_FLOOR)
    return optax.chain(optimizer, optax.scale_by_schedule(schedule))


def freeze(optimizer: optax.GradientTransformation, trainable: Any) -> optax.GradientTransformation:
    """``optimizer`` on leaves where ``trainable`` is True, zero updates elsewhere."""
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "freeze", trainable)
    return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)


def _sampled_shapes(sample_task: Callable[[jax.Array], Task]) -> Task:
    """The shapes and dtypes of one task from ``sample_task``, without running it."""
    try:
        task = jax.eval_shape(sample_task, jax.random.key(0))
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"sample_task could not be traced on a key ({type(error).__name__}: {first_line}); "
            "it must be a pure key -> Task function"
        ) from None
    if not isinstance(task, Task):
        raise TypeError(f"sample_task must return a jmeta Task, got {type(task).__name__}")
    return task


def make_meta_step(
    meta_learner: MetaLearner,
    sample_task: Callable[[jax.Array], Task],
    meta_batch: int,
    optimizer: optax.GradientTransformation | None = None,
    mesh: jax.sharding.Mesh | None = None,
    num_steps: int | None = None,
) -> MetaStep:
    """Builds the jitted outer step of ``meta_learner``.

    Args:
      meta_learner: from ``make_meta_learner``.
      sample_task: a pure ``key -> Task`` sampler; a meta-batch is drawn on device each step.
      meta_batch: the number of tasks a meta-step draws and averages over.
      optimizer: any optax transformation (default: ``default_optimizer()``). Frozen
        meta-parameters are masked out around it.
      mesh: a one-axis ``jax.sharding.Mesh`` (``jmeta.task_mesh(n)``) to spread each
        meta-batch over: ``meta_batch`` must be a multiple of its size. Meta-parameters and
        optimizer state are replicated; the numbers equal one device's up to float rounding.
      num_steps: the length of the run, which an annealed config (MAML++) needs and
        ``jmeta.train`` passes; others ignore it.
    """
    meta_batch = check_positive_int("meta_batch", meta_batch)
    config = meta_learner.config
    annealed = config.annealed
    if annealed:
        if num_steps is None:
            raise ValueError(
                "this meta-learner's config anneals with training's progress (multi_step_loss, "
                "first_order_until or outer_schedule='cosine'): give make_meta_step num_steps=, "
                "the run's length (jmeta.train does)"
            )
        num_steps = check_positive_int("num_steps", num_steps)
    if mesh is not None:
        check_mesh(mesh)
        task_gradient = sharded_task_gradient(meta_learner.meta_grad, sample_task, meta_batch, mesh)
    else:

        def task_gradient(meta_params, key, *progress):
            tasks = sample_tasks(sample_task, key, meta_batch)
            return meta_learner.meta_grad(meta_params, tasks, *progress)

    optimizer = default_optimizer() if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
        )
    if meta_learner.check_tasks is not None:
        # The sampler's output shapes, checked against the learners before anything compiles.
        task = _sampled_shapes(sample_task)
        try:
            meta_learner.check_tasks(task, batched=False)
        except ValueError as error:
            raise ValueError(f"sample_task's tasks do not fit the meta-learner: {error}") from None
    if config.outer_schedule == "cosine":
        optimizer = cosine_annealed(optimizer, num_steps)
    transform = freeze(optimizer, meta_learner.trainable(meta_learner.init()))

    def init(meta_params) -> MetaState:
        # The steps donate their input state; copying here keeps the caller's arrays (often
        # the learners' own initial params) alive after the first step.
        meta_params = jax.tree_util.tree_map(jnp.copy, meta_params)
        state = MetaState(meta_params, transform.init(meta_params), jnp.zeros((), jnp.int32))
        # On a mesh the state lives replicated on every device from the start: donation
        # needs the step's input and output shardings to be equal.
        return state if mesh is None else put_replicated(state, mesh)

    def step(state: MetaState, key: jax.Array):
        # How far meta-training has gone, for the annealed objectives only.
        progress = (state.step / num_steps,) if annealed else ()
        grads, metrics = task_gradient(
            state.meta_params, jax.random.fold_in(key, state.step), *progress
        )
        # One reduction per step: the number ``fit`` watches for a non-finite meta-gradient.
        metrics = {**metrics, "outer/grad_norm": optax.tree.norm(grads)}
        updates, opt_state = transform.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        return MetaState(meta_params, opt_state, state.step + 1), metrics

    def run(state: MetaState, key: jax.Array, num_steps: int):
        return jax.lax.scan(lambda s, _: step(s, key), state, None, length=num_steps)

    # Pinning the outputs replicated keeps the donated state's sharding fixed across steps.
    shardings = {} if mesh is None else {"out_shardings": replicated(mesh)}
    return MetaStep(
        init,
        jax.jit(step, donate_argnums=0, **shardings),
        jax.jit(run, static_argnums=2, donate_argnums=0, **shardings),
        meta_learner.execution,
        mesh,
    )
