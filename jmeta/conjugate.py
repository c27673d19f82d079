"""Conjugate gradient with a fixed number of iterations that stops at non-positive curvature:
the linear solver of the implicit meta-gradient (``jmeta.implicit``), on pytrees."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

# A search direction whose Rayleigh quotient is below this counts as flat: for the implicit
# gradient's I + H / lambda it means H curves down by almost lambda there, and a step along
# it would multiply the iterate by thousands.
FLAT = 1e-3


def _dot(a: Any, b: Any) -> jax.Array:
    """The inner product of two pytrees of the same structure."""
    return sum(
        jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def _axpy(alpha: jax.Array, x: Any, y: Any) -> Any:
    """``alpha * x + y`` leaf by leaf."""
    return jax.tree_util.tree_map(lambda a, b: alpha * a + b, x, y)


def conjugate_gradient(matvec: Callable, b: Any, steps: int) -> Any:
    """``steps`` iterations of conjugate gradient for ``matvec(x) = b`` from ``x = 0``, stopped
    where a search direction meets non-positive (or ``FLAT``) curvature.

    ``jax.scipy.sparse.linalg.cg`` has no such stop, and the system ``I + H / lambda`` is
    indefinite wherever the support loss curves down by more than lambda (a sinusoid MLP's
    Hessian has eigenvalues below -20 at initialisation): there a CG step divides by a
    curvature near zero or below it and the meta-gradient blows up. Truncating there is
    Steihaug's and Hessian-free optimisation's rule; at the first iteration it returns
    ``b`` itself, the first-order meta-gradient. On a positive definite system it is plain
    CG (the tests check it against ``numpy.linalg.solve``). A fixed number of iterations in a
    ``fori_loop`` also batches under ``vmap`` without a data-dependent ``while_loop``.
    """

    def iteration(_, state):
        x, r, p, rr, done = state
        ap = matvec(p)
        curvature = _dot(p, ap)
        # Non-positive curvature, or so little that the step would blow the iterate up.
        stop = done | (curvature <= FLAT * _dot(p, p)) | (rr == 0)
        alpha = jnp.where(stop, 0.0, rr / jnp.where(stop, 1.0, curvature))
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        new_rr = _dot(r, r)
        beta = jnp.where(stop, 0.0, new_rr / jnp.where(rr == 0, 1.0, rr))
        p = jax.tree_util.tree_map(lambda d, q: jnp.where(stop, q, d + beta * q), r, p)
        return x, r, p, jnp.where(stop, rr, new_rr), stop

    zeros = jax.tree_util.tree_map(jnp.zeros_like, b)
    rr = _dot(b, b)
    x, _, _, _, _ = jax.lax.fori_loop(0, steps, iteration, (zeros, b, b, rr, jnp.asarray(False)))
    # Negative curvature on the very first direction leaves x at zero: fall back to b.
    return jax.tree_util.tree_map(lambda xi, bi: jnp.where(_dot(x, x) == 0, bi, xi), x, b)
