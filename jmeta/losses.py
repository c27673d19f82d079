"""Losses the meta-objective and the inner loop minimise: per-task means, no reductions over
tasks."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jmeta.validation import check_choice

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error over every element."""
    return jnp.mean(jnp.square(predictions - targets))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against integer labels.

    A label outside ``0..classes-1`` makes the loss NaN, so that ``jmeta.fit`` stops with an
    error even for labels made inside a jitted sampler: the gather underneath reads a
    negative label Python-style (``-1`` as the last class, a wrong but finite loss) and
    gives NaN only for labels past the end.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    in_range = (labels >= 0) & (labels < logits.shape[-1])
    return jnp.mean(jnp.where(in_range, losses, jnp.nan))


LOSSES: dict[str, LossFn] = {"mse": mse, "ce": cross_entropy}


def get_loss(name: str) -> LossFn:
    """Looks a loss up by name: ``"mse"`` or ``"ce"``."""
    return LOSSES[check_choice("loss", name, LOSSES)]
