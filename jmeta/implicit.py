"""Implicit meta-gradients (iMAML, Rajeswaran et al. 2019): differentiate the inner
problem's solution, not the steps that reached it.

The inner loop solves ``phi* = argmin_phi L(phi) + lambda/2 |phi - theta|^2`` on the support
set (by ``make_adapt(..., proximal=lambda)``'s gradient steps). At the solution,
``grad L(phi*) + lambda (phi* - theta) = 0``, and the implicit function theorem gives
``d phi* / d theta = (I + H / lambda)^-1`` with ``H`` the support loss's Hessian at ``phi*``.
So the meta-gradient of a query loss is ``(I + H / lambda)^-1 grad L_query(phi*)``, solved
here by conjugate gradient on Hessian-vector products (forward-over-reverse) inside a
custom VJP. The backward pass keeps only ``phi*`` and the support set: memory does not
depend on the number of inner steps, and neither does the cost of the backward pass.

Leaves that do not adapt (ANIL's body, a frozen mask) still shape ``phi*``; their cotangent
is ``-1/lambda d/dtheta_f <grad L(phi*; theta_f), x>`` with ``x`` the CG solution, the
same theorem applied to them. The inner rate gets none: the solution does not depend on
the rate that reached it, so ``meta_gradient="implicit"`` takes a fixed rate only.

The gradient is exact at the exact solution; with a finite number of inner steps it is an
approximation, which is why the tests compare it with the gradient unrolled through many
proximal steps (``tests/test_implicit.py``). A loss that is only piecewise smooth (ReLU and
batch norm on tiny inputs) can keep plain gradient steps from reaching the solution at all.
CG amplifies float32 rounding by the system's condition number: on sinusoid MLPs a task
solved alone and inside a vmapped batch differ by 1e-4 relative (1e-14 in float64).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jmeta.conjugate import conjugate_gradient
from jmeta.inner import merge, partition
from jmeta.losses import LossFn
from jmeta.models import Learner
from jmeta.tasks.base import Batch


def make_implicit_adapt(
    adapt: Callable, learners: tuple[Learner, ...], loss_fn: LossFn, proximal: float, cg_steps: int
) -> Callable:
    """``adapt`` (the proximal inner loop of ``make_adapt``) whose VJP is the implicit one.

    Args:
      adapt: ``(learner_params, log_rates, support, num_steps, observe=None) -> (params,
        trace)`` built with ``proximal=proximal``.
      learners: the base learners (their ``adapt_mask`` splits adapted from fixed leaves).
      loss_fn: the support loss whose Hessian enters the linear system.
      proximal: lambda, the strength of the proximal term (> 0).
      cg_steps: conjugate-gradient iterations for ``(I + H / lambda) x = grad L_query``.

    Returns:
      A function of ``adapt``'s signature. With ``observe`` (evaluation) it is ``adapt``
      itself: nothing is differentiated there.
    """

    def support_loss(adapted: tuple, frozen: tuple, support: Batch) -> jax.Array:
        losses = [
            loss_fn(l.apply_fn(merge(a, f), support.x), support.y)
            for l, a, f in zip(learners, adapted, frozen)
        ]
        return sum(losses)

    def implicit_adapt(learner_params, log_rates, support: Batch, num_steps: int, observe=None):
        if observe is not None:
            return adapt(learner_params, log_rates, support, num_steps, observe)
        parts = [partition(p, l.adapt_mask) for l, p in zip(learners, learner_params)]
        anchor, frozen = tuple(a for a, _ in parts), tuple(f for _, f in parts)

        def solve(anchor, frozen, log_rates, support):
            params = tuple(merge(a, f) for a, f in zip(anchor, frozen))
            params, trace = adapt(params, log_rates, support, num_steps)
            adapted = tuple(partition(p, l.adapt_mask)[0] for l, p in zip(learners, params))
            return adapted, trace

        adapted, trace = _implicit_solution(solve, support_loss, proximal, cg_steps)(
            anchor, frozen, log_rates, support
        )
        return tuple(merge(a, f) for a, f in zip(adapted, frozen)), trace

    return implicit_adapt


def _implicit_solution(
    solve: Callable, support_loss: Callable, proximal: float, cg_steps: int
) -> Callable:
    """``solve(anchor, frozen, log_rates, support) -> (adapted, trace)`` with the implicit
    VJP: the trace is a metric (its cotangent is dropped) and the support set and rates get
    none."""

    @jax.custom_vjp
    def solution(anchor, frozen, log_rates, support):
        return solve(anchor, frozen, log_rates, support)

    def forward(anchor, frozen, log_rates, support):
        adapted, trace = solve(anchor, frozen, log_rates, support)
        # Only the solution and the support set are kept: nothing of the steps that found it.
        return (adapted, trace), (adapted, frozen, log_rates, support)

    def backward(residuals, cotangents):
        adapted, frozen, log_rates, support = residuals
        query_grad, _ = cotangents

        def inner_grad(a, f):
            return jax.grad(support_loss)(a, f, support)

        def system(v: Any) -> Any:
            # (I + H / lambda) v, with H v forward-over-reverse: one JVP of the gradient.
            hessian_v = jax.jvp(lambda a: inner_grad(a, frozen), (adapted,), (v,))[1]
            return jax.tree_util.tree_map(lambda x, h: x + h / proximal, v, hessian_v)

        solved = conjugate_gradient(system, query_grad, cg_steps)
        _, pull_back = jax.vjp(lambda f: inner_grad(adapted, f), frozen)
        (frozen_grad,) = pull_back(solved)
        frozen_cotangent = jax.tree_util.tree_map(lambda g: -g / proximal, frozen_grad)
        return solved, frozen_cotangent, jax.tree_util.tree_map(jnp.zeros_like, log_rates), None

    solution.defvjp(forward, backward)
    return solution
