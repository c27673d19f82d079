"""The learning strategy: weights over base learners' outputs, through an activation.

The weights are stored as unconstrained logits. ``softmax`` gives convex weights (a
mixture); ``sigmoid`` gives independent weights in (0, 1) that need not sum to one.
For cross-entropy the learners' log-probabilities are combined, a weighted geometric
pooling that the loss renormalises; for MSE the outputs themselves are combined.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jmeta.validation import check_choice

ACTIVATIONS = {"softmax": jax.nn.softmax, "sigmoid": jax.nn.sigmoid}


def strategy_weights(logits: jax.Array, activation: str) -> jax.Array:
    """Maps the stored logits (one per base learner) to the strategy's weights."""
    return ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)](logits)


def combine_outputs(
    outputs: Sequence[jax.Array], logits: jax.Array, activation: str, loss: str
) -> jax.Array:
    """The strategy's prediction: ``sum_l w_l * out_l`` (of log-probabilities for ``"ce"``)."""
    if len(outputs) == 1 and activation == "softmax":
        # The softmax of one logit is identically 1 (zero gradient): skipping the product
        # changes no value and keeps the single-learner meta-gradient as lean as plain MAML.
        return outputs[0]
    if loss == "ce":
        outputs = [jax.nn.log_softmax(out, axis=-1) for out in outputs]
    weights = strategy_weights(logits, activation)
    return jnp.tensordot(weights, jnp.stack(outputs), axes=1)
