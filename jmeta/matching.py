"""Matching networks (Vinyals et al. 2016): a query attends over the support set.

The attention is a softmax over the scaled cosine similarities of a query's embedding to
every support embedding, and the probability of class ``c`` is the attention on the
support examples of class ``c``; the logits returned are those log-probabilities, so the
cross-entropy of the core is the paper's loss. One embedding serves support and query
(the paper's variant without full-context embeddings).

Design: the cosine is multiplied by a learned scale (stored as a logarithm, 10 at the
start). Vinyals et al. have none; with cosines in [-1, 1] the attention then stays near
uniform and the loss barely moves, which is why later cosine classifiers (Chen et al.
2019's Baseline++, Gidaris and Komodakis 2018) all add one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta.closed_form import Head, make_closed_form
from jmeta.execution import CPU, Execution
from jmeta.models import Learner
from jmeta.objective import MetaLearner
from jmeta.validation import check_positive_float


def cosine_similarities(queries: jax.Array, support: jax.Array) -> jax.Array:
    """``(queries, support)`` cosines between embeddings (a zero vector has cosine 0)."""
    unit = lambda z: z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return unit(queries) @ unit(support).T


def matching_logits(
    queries: jax.Array, support: jax.Array, labels: jax.Array, ways: int, scale: jax.Array
) -> jax.Array:
    """Log-probabilities ``(queries, ways)``: ``log sum_{i: y_i = c} softmax_i(scale cos_i)``,
    by log-sum-exp (a class whose attention underflows in float32 still gets a finite
    logit)."""
    attention = jax.nn.log_softmax(scale * cosine_similarities(queries, support), axis=-1)
    in_class = jnp.where(jax.nn.one_hot(labels, ways, dtype=bool), 0.0, -jnp.inf)
    return jax.nn.logsumexp(attention[:, :, None] + in_class[None, :, :], axis=1)


def make_matching_network(
    embedding: Learner,
    ways: int,
    *,
    scale: float = 10.0,
    execution: Execution = CPU,
    compute_dtype: str = "float32",
) -> MetaLearner:
    """A matching network over ``embedding`` (e.g. ``conv4_learner(key, ways=0)``) for
    ``ways``-way tasks; ``scale`` is the initial value of the learned cosine scale. Its
    meta-parameters are ``{"body": embedding params, "head": {"log_scale": ...}}``."""
    log_scale = jnp.log(check_positive_float("scale", scale))
    head = Head(
        "matching",
        {"log_scale": jnp.asarray(log_scale, jnp.float32)},
        lambda _, embeddings, labels, ways: (embeddings, labels),  # the support set itself
        lambda params, support, queries: matching_logits(
            queries, *support, ways, jnp.exp(params["log_scale"])
        ),
    )
    return make_closed_form(embedding, ways, head, execution=execution, compute_dtype=compute_dtype)
