"""Learning-strategy weights over fixed base learners' predictions (stacking).

Given out-of-fold predictions ``P`` of ``L`` base learners — values ``(L, n)`` for
regression or class probabilities ``(L, n, C)`` — the strategy predicts
``sum_l w_l P_l`` with ``w = softmax(logits)`` (convex weights) or ``sigmoid(logits)``.
Probabilities are mixed arithmetically, as the Super Learner does; with sigmoid weights
the mixture is renormalised by ``sum_l w_l`` so that it stays a distribution. (The
differentiable form in ``jmeta.strategy`` pools log-probabilities of adapted networks
instead, which keeps the meta-objective smooth in their logits.)

Rows are padded to the next power of two with a zero weight, so refits on folds of
slightly different sizes reuse one compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta.optim import make_optimizer, minimise
from jmeta.strategy import strategy_weights
from jmeta.validation import check_choice, check_finite, check_positive_int

STACKING_LOSSES = ("mse", "ce")


def stacked_prediction(logits: jax.Array, predictions: jax.Array, activation: str) -> jax.Array:
    """The strategy's prediction from base predictions ``(L, n)`` or probabilities ``(L, n, C)``."""
    weights = strategy_weights(logits, activation)
    combined = jnp.tensordot(weights, predictions, axes=1)
    if predictions.ndim == 3 and activation == "sigmoid":
        combined = combined / jnp.sum(weights)
    return combined


def strategy_loss(
    logits: jax.Array,
    predictions: jax.Array,
    targets: jax.Array,
    row_weights: jax.Array,
    activation: str,
    loss: str,
) -> jax.Array:
    """Weighted mean loss of the strategy: squared error, Brier score or cross-entropy.

    For probabilities, ``targets`` are class indices; ``"mse"`` is then the Brier score
    against one-hot targets and ``"ce"`` the negative log-likelihood.
    """
    combined = stacked_prediction(logits, predictions, activation)
    if predictions.ndim == 3:
        one_hot = jax.nn.one_hot(targets, predictions.shape[-1], dtype=combined.dtype)
        if loss == "ce":
            per_row = -jnp.log(jnp.sum(combined * one_hot, axis=-1) + 1e-6)
        else:
            per_row = jnp.sum(jnp.square(combined - one_hot), axis=-1)
    else:
        per_row = jnp.square(combined - targets)
    return jnp.sum(row_weights * per_row) / jnp.sum(row_weights)


@functools.lru_cache(maxsize=64)
def _compiled_fit(
    activation: str, loss: str, optimizer: str, learning_rate: float, num_iterations: int
):
    transformation = make_optimizer(optimizer, learning_rate)

    @jax.jit
    def fit(predictions, targets, row_weights):
        objective = lambda logits: strategy_loss(
            logits, predictions, targets, row_weights, activation, loss
        )
        logits, losses, _ = minimise(
            objective,
            jnp.zeros(predictions.shape[0], predictions.dtype),
            transformation,
            num_iterations,
        )
        return logits, losses

    return fit


def _pad_rows(
    predictions: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = predictions.shape[1]
    padded = 1 << max(rows - 1, 1).bit_length()
    pad = padded - rows
    predictions = np.pad(predictions, [(0, 0), (0, pad)] + [(0, 0)] * (predictions.ndim - 2))
    targets = np.pad(targets, [(0, pad)])
    return (
        predictions,
        targets,
        np.concatenate([np.ones(rows), np.zeros(pad)]).astype(predictions.dtype),
    )


def fit_strategy(
    predictions,
    targets,
    *,
    activation: str = "softmax",
    loss: str = "mse",
    optimizer: str | optax.GradientTransformation = "lbfgs",
    learning_rate: float = 0.05,
    num_iterations: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Learns the strategy logits that minimise ``loss`` of the stacked prediction.

    Args:
      predictions: ``(L, n)`` predictions or ``(L, n, C)`` class probabilities of ``L`` base
        learners on ``n`` rows, out of fold.
      targets: ``(n,)`` values, or class indices for probabilities.
      activation: ``"softmax"`` or ``"sigmoid"``.
      loss: ``"mse"`` (Brier score for probabilities) or ``"ce"`` (probabilities only).
      optimizer: ``"lbfgs"``, ``"adam"``, ``"sgd"`` or an optax transformation.
      learning_rate: for ``"adam"`` and ``"sgd"``.
      num_iterations: optimizer steps.

    Returns:
      ``(logits, losses)``: the learned logits ``(L,)`` and the loss before each step.
    """
    predictions = np.asarray(predictions, dtype=np.float32)
    targets = np.asarray(targets)
    check_choice("activation", activation, ("softmax", "sigmoid"))
    check_choice("loss", loss, STACKING_LOSSES)
    num_iterations = check_positive_int("num_iterations", num_iterations)
    if predictions.ndim not in (2, 3) or predictions.shape[0] < 1:
        raise ValueError(
            "predictions must have shape (learners, rows) or (learners, rows, classes), got "
            f"{predictions.shape}"
        )
    if targets.shape != (predictions.shape[1],):
        raise ValueError(
            f"targets must have shape ({predictions.shape[1]},) to match predictions "
            f"{predictions.shape}, "
            f"got {targets.shape}"
        )
    if loss == "ce" and predictions.ndim != 3:
        raise ValueError(
            "loss='ce' needs class probabilities of shape (learners, rows, classes); use 'mse' for "
            "regression"
        )
    check_finite("predictions", predictions)
    check_finite("targets", targets)
    targets = targets.astype(np.int32 if predictions.ndim == 3 else np.float32)
    padded_predictions, padded_targets, row_weights = _pad_rows(predictions, targets)
    if isinstance(optimizer, str):
        fit = _compiled_fit(activation, loss, optimizer, float(learning_rate), num_iterations)
    else:
        fit = _compiled_fit.__wrapped__(
            activation, loss, optimizer, float(learning_rate), num_iterations
        )
    logits, losses = fit(padded_predictions, padded_targets, row_weights)
    return np.asarray(logits), np.asarray(losses)
