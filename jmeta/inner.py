"""The inner loop: a few functional SGD steps on one task's support set, under ``lax.scan``.

Inner learning rates are meta-parameters stored as logarithms, so that gradient steps in
the outer loop can never make a rate negative. Four forms share one code path; they differ
only in the shape of the stored log-rate:

==================  ==========================================  ============================
``inner_rate``      stored log-rate                             algorithm
==================  ==========================================  ============================
``"fixed"``         a scalar, always frozen                     MAML, first-order MAML, ANIL
``"scalar"``        a scalar, learned (the meta learning rate)  MAML with a learned rate
``"per_param"``     one per parameter element                   Meta-SGD (Li et al. 2017)
``"per_step_layer"`` one per inner step and parameter leaf      MAML++'s LSLR (Antoniou 2019)
==================  ==========================================  ============================

Meta-SGD in log space cannot flip the sign of a rate as the original can; in exchange the
rates stay positive without clipping. With ``per_step_layer``, steps past the number the
rates were built for reuse the last step's rates, so a learner can be evaluated with more
steps than it was trained with.

Three more settings change the step itself, not its schedule. ``proximal`` (iMAML's
lambda) adds ``lambda/2 |phi - theta|^2`` to the support loss, pulling the adapted weights
towards the initial ones. ``curvature_steps`` caps each task's rate at ``1 / (lambda + h)``,
with ``h`` the support loss's largest Hessian eigenvalue at the initial weights (that many
Lanczos iterations): the step that keeps gradient descent on a quadratic from diverging.
Without it iMAML on sinusoids diverged every time: its meta-gradient does not see the
inner steps, and meta-training raised ``h`` from 200 to 1,500 until any fixed rate was
too large. ``per_step`` marks leaves stored once per step (MAML++'s per-step
batch-norm weights): their meta-parameter has a leading axis of ``num_steps + 1``, entry
``t`` serves the network after ``t`` steps, and they do not adapt.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jmeta.losses import LossFn
from jmeta.models import Learner
from jmeta.tasks.base import Batch

RATE_KINDS = ("fixed", "scalar", "per_param", "per_step_layer")
REMAT_KINDS = ("none", "step", "rollout")


def partition(params: Any, mask: Any) -> tuple[Any, Any]:
    """Splits ``params`` into (adapted, frozen) trees with ``None`` in the other's places."""
    if mask is None:
        return params, jax.tree_util.tree_map(lambda _: None, params)
    adapted = jax.tree_util.tree_map(lambda p, m: p if m else None, params, mask)
    frozen = jax.tree_util.tree_map(lambda p, m: None if m else p, params, mask)
    return adapted, frozen


def merge(adapted: Any, frozen: Any) -> Any:
    """Inverse of ``partition``."""
    return jax.tree_util.tree_map(
        lambda a, f: f if a is None else a, adapted, frozen, is_leaf=lambda x: x is None
    )


def at_step(params: Any, per_step: Any, step: Any) -> Any:
    """``params`` as the network sees them after ``step`` inner steps: each ``per_step`` leaf
    (leading axis: one entry per step) at entry ``step``, or its last entry past the end."""
    if per_step is None:
        return params
    return jax.tree_util.tree_map(
        lambda p, m: p[jnp.minimum(step, p.shape[0] - 1)] if m else p, params, per_step
    )


def squared_distance(tree: Any, other: Any) -> jax.Array:
    """``|tree - other|^2`` summed over every leaf."""
    parts = jax.tree_util.tree_map(lambda a, b: jnp.sum(jnp.square(a - b)), tree, other)
    return sum(jax.tree_util.tree_leaves(parts))


def top_curvature(loss: Callable, params: Any, steps: int) -> jax.Array:
    """The largest eigenvalue of ``loss``'s Hessian at ``params``: the top Ritz value of
    ``steps`` Lanczos iterations on Hessian-vector products (forward-over-reverse), started
    from the gradient's direction.

    Lanczos rather than power iteration: power iteration finds the eigenvalue largest in
    *magnitude*, which on a network's indefinite Hessian is often a negative one, and it
    then hid the positive curvature that makes a rate diverge. Ritz values lie inside the
    spectrum, so the estimate never overshoots and only grows with ``steps``; a Krylov
    space exhausted early adds zeros, which ``max(h, 0)`` reads as no curvature."""
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(lambda w: loss(unravel(w)))

    def hessian_times(v):
        return jax.jvp(grad, (flat,), (v,))[1]

    def unit(v):
        length = jnp.linalg.norm(v)
        return v / jnp.where(length > 0, length, 1.0), length

    # A tiny offset keeps the start off zero where the gradient vanishes.
    start, _ = unit(grad(flat) + 1e-6)

    def lanczos_step(carry, _):
        v, previous, beta = carry
        w = hessian_times(v) - beta * previous
        alpha = jnp.vdot(w, v)
        w = w - alpha * v
        w = w - jnp.vdot(w, v) * v  # once more: float32 loses orthogonality quickly
        following, beta_next = unit(w)
        return (following, v, beta_next), (alpha, beta_next)

    zeros = jnp.zeros_like(flat)
    _, (alphas, betas) = jax.lax.scan(
        lanczos_step, (start, zeros, jnp.zeros((), flat.dtype)), None, length=steps
    )
    off = betas[:-1]
    tridiagonal = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tridiagonal)[-1]


def init_log_rate(kind: str, inner_lr: float, learner: Learner, num_steps: int) -> Any:
    """The stored (log) inner rate of ``learner`` for rate form ``kind``."""
    adapted, _ = partition(learner.params, learner.adapt_mask)
    dtype = jax.tree_util.tree_leaves(learner.params)[0].dtype
    log_lr = jnp.log(jnp.asarray(inner_lr, dtype))
    if kind in ("fixed", "scalar"):
        return log_lr
    if kind == "per_param":
        return jax.tree_util.tree_map(lambda p: jnp.full(p.shape, log_lr, p.dtype), adapted)
    if kind == "per_step_layer":
        return jax.tree_util.tree_map(lambda p: jnp.full((num_steps,), log_lr, p.dtype), adapted)
    raise ValueError(f"unknown inner_rate {kind!r}; expected one of {RATE_KINDS}")


def rate_at(kind: str, log_rate: Any, step: jax.Array, adapted: Any) -> Any:
    """The inner learning rate at ``step``, as a tree matching ``adapted``."""
    if kind in ("fixed", "scalar"):
        rate = jnp.exp(log_rate)
        return jax.tree_util.tree_map(lambda _: rate, adapted)
    if kind == "per_param":
        return jax.tree_util.tree_map(jnp.exp, log_rate)
    # per_step_layer: one rate per leaf and step; the last one is reused past the end.
    return jax.tree_util.tree_map(
        lambda r: jnp.exp(jnp.asarray(r)[jnp.minimum(step, r.shape[0] - 1)]), log_rate
    )


def make_adapt(
    learners: tuple[Learner, ...],
    loss_fn: LossFn,
    inner_rate: str,
    *,
    first_order: bool = False,
    remat: str = "none",
    fixed_lr: float | None = None,
    peel_first_step: bool = True,
    proximal: float = 0.0,
    per_step: tuple | None = None,
    curvature_steps: int = 0,
) -> Callable:
    """Builds ``adapt(learner_params, log_rates, support, num_steps, observe=None)``.

    Each base learner takes ``num_steps`` SGD steps ``params - lr * grad`` on its own support
    loss, all learners in one ``lax.scan``. With ``first_order`` the inner gradient is a
    constant to the meta-gradient (first-order MAML).

    ``remat`` trades compute for the memory of the second-order backward pass:

    * ``"none"``: every step's activations are stored; memory grows with steps.
    * ``"step"``: each step is wrapped in ``jax.checkpoint``; the backward pass recomputes a
      step's activations and stores only the parameters entering each step, so memory
      grows by one parameter copy per step.
    * ``"rollout"``: only the initial parameters are stored. A custom VJP walks the steps
      backwards and recomputes the parameters entering step ``t`` from the start, so memory
      does not grow with the number of steps, at ``T (T - 1) / 2`` extra inner steps of
      compute. The inner-loss trace is then a metric without gradient.
    With ``fixed_lr`` (a fixed inner rate) the rate is a Python constant that XLA folds,
    rather than ``exp`` of a frozen meta-parameter.

    The steps are one ``lax.scan``; ``peel_first_step`` (an execution setting, see
    ``jmeta.execution``) runs the first outside it instead (``peeled_scan``). Same values.

    ``proximal`` (lambda > 0) minimises ``support loss + lambda/2 |adapted - initial|^2``
    instead (iMAML's inner problem); the trace still reports the plain support loss.
    ``per_step`` (one mask per learner, or None) names leaves stored per step (see the
    module docstring); the params returned are those of step ``num_steps``. With
    ``curvature_steps`` the rate is at most ``1 / (proximal + h)`` (``top_curvature``),
    a constant to the meta-gradient.

    Returns a function giving ``(adapted_params, trace)`` where ``trace["inner/loss"]`` has
    shape ``(num_steps, num_learners)`` (support loss before each step) and, if ``observe``
    is given, ``trace["observed"]`` stacks ``observe(params)`` before each step.
    """

    masks = tuple(per_step) if per_step is not None else (None,) * len(learners)

    def step_learner(
        learner: Learner, mask, params, log_rate, step: jax.Array, support: Batch, centre
    ):
        anchor, cap = centre
        adapted, frozen = partition(params, learner.adapt_mask)

        def support_loss(adapted_part):
            now = at_step(merge(adapted_part, frozen), mask, step)
            loss = loss_fn(learner.apply_fn(now, support.x), support.y)
            if not proximal:
                return loss, loss
            return loss + 0.5 * proximal * squared_distance(adapted_part, anchor), loss

        (_, loss), grads = jax.value_and_grad(support_loss, has_aux=True)(adapted)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if fixed_lr is None:
            rates = rate_at(inner_rate, log_rate, step, adapted)
        else:
            rates = jax.tree_util.tree_map(lambda _: fixed_lr, adapted)
        if cap is not None:
            rates = jax.tree_util.tree_map(lambda r: jnp.minimum(r, cap), rates)
        adapted = jax.tree_util.tree_map(lambda p, g, r: p - r * g, adapted, grads, rates)
        return merge(adapted, frozen), loss

    def centres(learner_params, support: Batch) -> tuple:
        """Per learner, the initial adapted leaves (the centre of the proximal term) and the
        cap on its rate (None without ``curvature_steps``)."""
        out = []
        for learner, mask, params in zip(learners, masks, learner_params):
            adapted, frozen = partition(params, learner.adapt_mask)
            cap = None
            if curvature_steps:

                def support_loss(part):
                    now = at_step(merge(part, frozen), mask, 0)
                    return loss_fn(learner.apply_fn(now, support.x), support.y)

                top = jnp.maximum(top_curvature(support_loss, adapted, curvature_steps), 0.0)
                cap = jax.lax.stop_gradient(1.0 / (proximal + top))
            out.append((adapted, cap))
        return tuple(out)

    def at_steps(params: tuple, step) -> tuple:
        return tuple(at_step(p, m, step) for p, m in zip(params, masks))

    def adapted_step(adapted, constants, support, step):
        # Only the adapted leaves are carried through the rollout; the frozen ones enter as
        # constants. (Carried frozen leaves would leave the custom VJP unbatched under vmap,
        # and their cotangents would then be summed over tasks twice.)
        log_rates, frozen, centre = constants
        new_adapted, losses = [], []
        for learner, m, a, f, r, c in zip(learners, masks, adapted, frozen, log_rates, centre):
            params, loss = step_learner(learner, m, merge(a, f), r, step, support, c)
            new_adapted.append(partition(params, learner.adapt_mask)[0])
            losses.append(loss)
        return tuple(new_adapted), jnp.stack(losses)

    def adapt(learner_params, log_rates, support: Batch, num_steps: int, observe=None):
        centre = centres(learner_params, support)

        def body(params, step):
            observed = observe(at_steps(params, step)) if observe is not None else None
            stepped = [
                step_learner(l, m, p, r, step, support, c)
                for l, m, p, r, c in zip(learners, masks, params, log_rates, centre)
            ]
            new_params = tuple(p for p, _ in stepped)
            trace = {"inner/loss": jnp.stack([loss for _, loss in stepped])}
            if observe is not None:
                trace["observed"] = observed
            return new_params, trace

        if remat == "rollout" and observe is None:
            params, trace = rollout_scan(
                adapted_step,
                learners,
                tuple(learner_params),
                (log_rates, centre),
                support,
                num_steps,
            )
        else:
            if remat == "step":
                body = jax.checkpoint(body, prevent_cse=False)
            if peel_first_step or num_steps == 1:
                params, trace = peeled_scan(body, tuple(learner_params), num_steps)
            else:
                params, trace = jax.lax.scan(body, tuple(learner_params), jnp.arange(num_steps))
        return at_steps(params, num_steps), trace

    return adapt


def peeled_scan(body: Callable, params: Any, num_steps: int):
    """``lax.scan(body, params, arange(num_steps))`` with the first step run before the scan.

    Under ``vmap`` the initial weights are shared by all tasks, so the first step's forward
    and backward passes are single large matmuls; inside the scan the carry is per task from
    the start and they become per-task batched ones. The price is a second copy of the step
    for XLA to compile. A single step never enters a scan.
    """
    params, first = body(params, jnp.asarray(0))
    traces = [jax.tree_util.tree_map(lambda leaf: leaf[None], first)]
    if num_steps > 1:
        params, rest = jax.lax.scan(body, params, jnp.arange(1, num_steps))
        traces.append(rest)
    return params, jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts), *traces)


def rollout_scan(
    adapted_step: Callable,
    learners: tuple[Learner, ...],
    learner_params: tuple,
    rates_and_centres: tuple,
    support: Batch,
    num_steps: int,
):
    """The inner loop of ``remat="rollout"``: only the adapted leaves enter ``_rollout``, whose
    VJP stores nothing but the initial parameters; the frozen ones are constants (and so
    is the proximal centre, ``adapted_step``'s third constant)."""
    log_rates, centre = rates_and_centres
    parts = [partition(p, l.adapt_mask) for l, p in zip(learners, learner_params)]
    adapted, frozen = tuple(a for a, _ in parts), tuple(f for _, f in parts)
    # The initial adapted leaves enter twice: as the start of the rollout and, for a
    # proximal inner loss, as its constant centre (in ``centre``); their cotangents add up.
    adapted, trace = _rollout(
        adapted_step, adapted, (log_rates, frozen, centre), support, num_steps
    )
    return tuple(merge(a, f) for a, f in zip(adapted, frozen)), trace


def _rollout(step_fn: Callable, params: Any, constants: Any, support: Batch, num_steps: int):
    """``num_steps`` of ``step_fn`` whose VJP stores only the initial parameters.

    ``step_fn(params, constants, support, step) -> (params, losses)``; ``constants`` (the
    inner rates and frozen parameters) get cotangents too. The backward pass
    recomputes the parameters entering each step from ``params`` (a ``fori_loop``, which
    stores nothing) and pulls the cotangent back through that one step.
    """

    def run(start, rates, data, stop):
        return jax.lax.fori_loop(0, stop, lambda t, p: step_fn(p, rates, data, t)[0], start)

    @jax.custom_vjp
    def rollout(start, rates, data):
        return jax.lax.scan(lambda p, t: step_fn(p, rates, data, t), start, jnp.arange(num_steps))

    def forward(start, rates, data):
        return rollout(start, rates, data), (start, rates, data)

    def backward(residuals, cotangents):
        start, rates, data = residuals
        params_cotangent, _ = cotangents  # the losses are a metric: their cotangent is dropped

        def back_one(i, carry):
            params_cotangent, rates_cotangent = carry
            step = num_steps - 1 - i
            entering = run(start, rates, data, step)
            _, pull_back = jax.vjp(lambda p, r: step_fn(p, r, data, step)[0], entering, rates)
            params_cotangent, step_rates_cotangent = pull_back(params_cotangent)
            return params_cotangent, jax.tree_util.tree_map(
                jnp.add, rates_cotangent, step_rates_cotangent
            )

        zeros = jax.tree_util.tree_map(jnp.zeros_like, rates)
        params_cotangent, rates_cotangent = jax.lax.fori_loop(
            0, num_steps, back_one, (params_cotangent, zeros)
        )
        return params_cotangent, rates_cotangent, None

    rollout.defvjp(forward, backward)
    params, losses = rollout(params, constants, support)
    return params, {"inner/loss": jax.lax.stop_gradient(losses)}
