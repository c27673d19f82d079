"""Minimising a deterministic objective with an optax transformation or L-BFGS, in one jit.

The supervised meta-learner fits its learning strategy (and, across tasks, the whole
meta-objective) on a fixed data set: there is no sampling, so full-batch L-BFGS is often
the fastest choice, and any optax transformation works too. The loop is a ``lax.scan`` of
``num_iterations`` steps, so it compiles once per shape and records a metric per step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jmeta.validation import check_positive_float, check_positive_int

OPTIMIZERS = ("adam", "sgd", "lbfgs")


def make_optimizer(
    optimizer: str | optax.GradientTransformation, learning_rate: float = 0.05
) -> optax.GradientTransformation:
    """``"adam"``, ``"sgd"`` (gradient descent), ``"lbfgs"``, or any optax transformation as is."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    learning_rate = check_positive_float("learning_rate", learning_rate)
    if optimizer == "adam":
        return optax.adam(learning_rate)
    if optimizer == "sgd":
        return optax.sgd(learning_rate)
    if optimizer == "lbfgs":
        return optax.lbfgs()
    raise ValueError(
        f"unknown optimizer {optimizer!r}; expected one of {', '.join(map(repr, OPTIMIZERS))} "
        "or an optax GradientTransformation"
    )


def minimise(
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    optimizer: optax.GradientTransformation,
    num_iterations: int,
    record: Callable[[Any], Any] | None = None,
) -> tuple[Any, jax.Array, Any]:
    """Runs ``num_iterations`` optimizer steps on ``loss_fn`` from ``params``.

    Transformations that take extra arguments (L-BFGS's line search) get ``value``,
    ``grad`` and ``value_fn``. Call it under ``jax.jit`` (``num_iterations`` static).

    Returns:
      ``(params, losses, records)``: the parameters with the lowest loss seen (the last
      ones unless the optimizer made things worse), the loss before each step, and
      ``record(params)`` after each step stacked (``None`` without ``record``).
    """
    num_iterations = check_positive_int("num_iterations", num_iterations)
    extra_args = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def step(carry, _):
        params, state, best_params, best_loss = carry
        value, grad = jax.value_and_grad(loss_fn)(params)
        # Keep the best iterate: a line search that gives up (flat or non-smooth losses in
        # float32) can leave L-BFGS worse than where it started, and NaN never wins.
        improved = value < best_loss
        best_params = jax.tree_util.tree_map(
            lambda p, b: jnp.where(improved, p, b), params, best_params
        )
        best_loss = jnp.where(improved, value, best_loss)
        if extra_args:
            updates, state = optimizer.update(
                grad, state, params, value=value, grad=grad, value_fn=loss_fn
            )
        else:
            updates, state = optimizer.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state, best_params, best_loss), (
            value,
            record(params) if record is not None else None,
        )

    initial_loss = jnp.asarray(jnp.inf, jax.eval_shape(loss_fn, params).dtype)
    carry = (params, optimizer.init(params), params, initial_loss)
    (params, _, best_params, best_loss), (losses, records) = jax.lax.scan(
        step, carry, None, length=num_iterations
    )
    final_loss = loss_fn(params)
    params = jax.tree_util.tree_map(
        lambda p, b: jnp.where(final_loss < best_loss, p, b), params, best_params
    )
    return params, losses, records


def frozen_where(params: Any, trainable: Any) -> Any:
    """``params`` with ``stop_gradient`` on the leaves where ``trainable`` is False."""
    return jax.tree_util.tree_map(
        lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable
    )
