"""Meta-training: ``train`` (the whole recipe) and ``fit``, the host loop around the jitted meta
step: chunks, logging, checkpoints, progress bar.

Steps run in chunks of ``log_every`` inside one jitted ``lax.scan`` (``MetaStep.run``);
chunk boundaries are multiples of ``log_every`` whether or not the run was resumed, and
checkpoints fall on multiples of ``checkpoint_every`` (itself a multiple of
``log_every``), so a resumed run performs exactly the computation of an uninterrupted one.

Each chunk's metrics (with the meta-gradient's norm) come to the host for logging anyway;
``fit`` checks them there for NaN and infinity and stops at the first bad step, before the
state that holds it is checkpointed, so the last good checkpoint stays in place.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jmeta.errors import NonFiniteError
from jmeta.objective import MetaLearner
from jmeta.outer import MetaState, MetaStep, default_optimizer, make_meta_step
from jmeta.runs import RunDir, format_duration
from jmeta.sharding import put_replicated
from jmeta.tasks.base import TaskSampler
from jmeta.validation import check_positive_float, check_positive_int


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


def check_finite_metrics(
    per_step: dict, first_step: int, stage: str, run: RunDir | None, kept_step: int
) -> None:
    """Raises ``NonFiniteError`` if a chunk's metrics (each ``(steps,)``, the first for step
    ``first_step + 1``) hold a NaN or infinity, naming the first such step and metric.

    This reads the metrics already brought to the host for logging, including the
    meta-gradient's norm: no tensor is checked inside the jitted steps.
    """
    bad = {name: np.flatnonzero(~np.isfinite(v)) for name, v in per_step.items()}
    bad = {name: index[0] for name, index in bad.items() if index.size}
    if not bad:
        return
    first = min(bad.values())
    named = ", ".join(
        f"{name} is {per_step[name][first]}" for name in sorted(bad) if bad[name] == first
    )
    where = ""
    if run is not None:
        where = (
            f"; the last good checkpoint (step {kept_step}) is kept in {run.checkpoint_path(stage)}"
            if kept_step
            else "; no checkpoint had been written yet"
        )
    raise NonFiniteError(
        f"training stage {stage!r} stopped at step {first_step + first + 1}: {named}{where}. "
        "Look for NaN or inf in the data, labels outside the classes, or learning rates too "
        "large (outer_lr, inner_lr)"
    )


def _run_estimate(run: RunDir, began: float, done: int, left: int) -> str:
    """About how long the whole run has left: this stage's rate, and as long again for each
    stage after it."""
    per_step = (time.monotonic() - began) / max(done, 1)
    stage_total = per_step * (done + left)
    return f"~{format_duration(per_step * left + stage_total * run.stages_after_this())} left"


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
    kept_step = 0  # the step of the last checkpoint written or restored
    if run is not None:
        restored = run.load_checkpoint(stage, state)
        if restored is not None:
            state = restored if meta_step.mesh is None else put_replicated(restored, meta_step.mesh)
            kept_step = int(state.step)
        # Lines logged after the state being resumed (all of the stage's, without a
        # checkpoint) are dropped, and with them a line a crash cut short.
        run.rewind_metrics(stage, int(state.step))
    if meta_step.mesh is not None:  # every process passes the same key: one global array
        key = put_replicated(key, meta_step.mesh)
    step = start = int(state.step)
    label = run.begin_stage(stage) if run is not None else stage
    began = time.monotonic()
    metrics = {}
    with tqdm(total=num_steps, initial=step, desc=label, disable=not progress, leave=False) as bar:
        while step < num_steps:
            chunk = min(log_every - step % log_every, num_steps - step)
            if step == start:  # the first call traces and compiles: say so rather than sit at 0 %
                bar.set_description_str(f"{label} (compiling)")
            # The meta-learner's execution setting: one jitted scan of the chunk, or one
            # jitted call per step (jmeta.execution). Same values either way.
            if meta_step.execution.scan:
                state, per_step = meta_step.run(state, key, chunk)
            else:
                steps = []
                for _ in range(chunk):
                    state, step_metrics = meta_step.step(state, key)
                    steps.append(step_metrics)
                per_step = jax.tree_util.tree_map(lambda *values: jnp.stack(values), *steps)
            per_step = {name: np.asarray(values) for name, values in per_step.items()}
            check_finite_metrics(per_step, step, stage, run, kept_step)
            step += chunk
            metrics = {name: float(np.mean(values)) for name, values in per_step.items()}
            if step - chunk == start:
                bar.set_description_str(label)
            bar.update(chunk)
            postfix = {
                name.split("/")[-1]: f"{value:.3g}"
                for name, value in metrics.items()
                if "post" in name
            }
            if run is not None and run.stages_after_this():
                postfix["run"] = _run_estimate(run, began, step - start, num_steps - step)
            bar.set_postfix(postfix)
            if run is not None:
                run.log({"stage": stage, "step": step, **metrics})
                if step % checkpoint_every == 0 or step == num_steps:
                    run.save_checkpoint(stage, state)
                    kept_step = step
    if run is not None:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("post/"))
        run.say(
            f"{label}: {num_steps} steps, done in {format_duration(time.monotonic() - began)}"
            + (f" ({shown})" if shown else "")
        )
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
    mesh: jax.sharding.Mesh | None = None,
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
      mesh: spread each meta-batch over a one-axis device mesh (``jmeta.task_mesh``), as
        in ``make_meta_step``.

    Returns:
      The final ``MetaState``; its ``meta_params`` go to ``jmeta.evaluate``.

    Example::

      state = jmeta.train(maml, sampler, jax.random.key(0), 1000, meta_batch=8)
    """
    optimizer = (
        default_optimizer(check_positive_float("outer_lr", outer_lr))
        if optimizer is None
        else optimizer
    )
    meta_step = make_meta_step(
        meta_learner, sample_task, meta_batch, optimizer, mesh, num_steps=num_steps
    )
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
