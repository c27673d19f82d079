"""Meta-training: ``train`` (the whole recipe) and ``fit``, the host loop around the jitted meta
step: chunks, logging, checkpoints, progress bar.

Steps run in chunks of ``log_every`` inside one jitted ``lax.scan`` (``MetaStep.run``);
chunk boundaries are multiples of ``log_every`` whether or not the run was resumed, and
checkpoints fall on multiples of ``checkpoint_every`` (itself a multiple of
``log_every``), so a resumed run performs exactly the computation of an uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

from jmeta.objective import MetaLearner
from jmeta.outer import MetaState, MetaStep, default_optimizer, make_meta_step
from jmeta.runs import RunDir
from jmeta.tasks.base import TaskSampler
from jmeta.validation import check_positive_int


def check_schedule(num_steps: int, log_every: int, checkpoint_every: int) -> tuple[int, int, int]:
    """``fit``'s schedule as ints, or a ``ValueError`` naming the bad one (for callers that
    check a whole configuration before loading data or compiling)."""
    num_steps = check_positive_int("num_steps", num_steps)
    log_every = check_positive_int("log_every", log_every)
    checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    if checkpoint_every % log_every:
        raise ValueError(
            f"checkpoint_every ({checkpoint_every}) must be a multiple of log_every ({log_every})"
        )
    return num_steps, log_every, checkpoint_every


def fit(
    meta_step: MetaStep,
    state: MetaState,
    key: jax.Array,
    num_steps: int,
    *,
    log_every: int = 100,
    checkpoint_every: int = 1000,
    run: RunDir | None = None,
    stage: str = "train",
    progress: bool = True,
) -> MetaState:
    """Runs meta-training until ``state.step == num_steps``.

    Args:
      meta_step: from ``make_meta_step``; its ``execution.scan`` (the meta-learner's) picks
        one jitted scan per chunk or one jitted call per step.
      state: the initial state; replaced by the stage's checkpoint in ``run`` if it has one.
      key: the base key of the run (``step`` folds the step number into it).
      num_steps: total outer steps.
      log_every: metrics (means over the chunk) are logged every ``log_every`` steps.
      checkpoint_every: the state is saved atomically every ``checkpoint_every`` steps.
      run: where to log and checkpoint; ``None`` keeps everything in memory.
      stage: the name of this training run inside ``run``.
      progress: show a tqdm progress bar.

    Returns:
      The final ``MetaState``.
    """
    num_steps, log_every, checkpoint_every = check_schedule(num_steps, log_every, checkpoint_every)
    if run is not None:
        restored = run.load_checkpoint(stage, state)
        if restored is not None:
            state = restored
            run.rewind_metrics(stage, int(state.step))
    step = int(state.step)
    with tqdm(total=num_steps, initial=step, desc=stage, disable=not progress, leave=False) as bar:
        while step < num_steps:
            chunk = min(log_every - step % log_every, num_steps - step)
            # The meta-learner's execution setting: one jitted scan of the chunk, or one
            # jitted call per step (jmeta.execution). Same values either way.
            if meta_step.execution.scan:
                state, metrics = meta_step.run(state, key, chunk)
            else:
                totals = None
                for _ in range(chunk):
                    state, step_metrics = meta_step.step(state, key)
                    totals = (
                        step_metrics
                        if totals is None
                        else jax.tree_util.tree_map(jnp.add, totals, step_metrics)
                    )
                metrics = jax.tree_util.tree_map(lambda total: total / chunk, totals)
            step += chunk
            metrics = {name: float(value) for name, value in metrics.items()}
            bar.update(chunk)
            bar.set_postfix(
                {
                    name.split("/")[-1]: f"{value:.3g}"
                    for name, value in metrics.items()
                    if "post" in name
                }
            )
            if run is not None:
                run.log({"stage": stage, "step": step, **metrics})
                if step % checkpoint_every == 0 or step == num_steps:
                    run.save_checkpoint(stage, state)
    return state


def train(
    meta_learner: MetaLearner,
    sample_task: TaskSampler,
    key: jax.Array,
    num_steps: int,
    *,
    meta_batch: int,
    optimizer: optax.GradientTransformation | None = None,
    outer_lr: float = 1e-3,
    meta_params=None,
    log_every: int = 100,
    checkpoint_every: int = 1000,
    run: RunDir | None = None,
    stage: str = "train",
    progress: bool = True,
) -> MetaState:
    """Meta-trains ``meta_learner`` on tasks from ``sample_task``: the build, init, fit recipe.

    Args:
      meta_learner: from ``make_meta_learner`` or ``make_protonet``; its ``execution``
        decides how the steps run (``jmeta.execution``).
      sample_task: a pure ``key -> Task`` sampler.
      key: the run's base key.
      num_steps: outer steps.
      meta_batch: tasks per outer step.
      optimizer: any optax transformation (default ``default_optimizer(outer_lr)``).
      meta_params: where to start (default ``meta_learner.init()``).
      log_every, checkpoint_every, run, stage, progress: as in ``fit``: metrics, atomic
        checkpoints and exact resume in ``run``, a progress bar.

    Returns:
      The final ``MetaState``; its ``meta_params`` go to ``jmeta.evaluate``.

    Example::

      state = jmeta.train(maml, sampler, jax.random.key(0), 1000, meta_batch=8)
    """
    optimizer = default_optimizer(outer_lr) if optimizer is None else optimizer
    meta_step = make_meta_step(meta_learner, sample_task, meta_batch, optimizer)
    start = meta_learner.init() if meta_params is None else meta_params
    return fit(
        meta_step,
        meta_step.init(start),
        key,
        num_steps,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        run=run,
        stage=stage,
        progress=progress,
    )
