"""Prototypical networks (Snell et al. 2017) as a closed-form meta-learner of the core.

Adaptation is closed-form: the "adapted parameters" of a task are its class prototypes,
the mean embedding of each class's support examples, and a query's logits are minus its
squared Euclidean distances to them (``jmeta.closed_form`` builds the meta-learner).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta.closed_form import Head, make_closed_form
from jmeta.execution import CPU, Execution
from jmeta.models import Learner
from jmeta.objective import MetaLearner


def prototypes(embeddings: jax.Array, labels: jax.Array, ways: int) -> jax.Array:
    """Mean embedding of each class ``0..ways-1``: ``(ways, features)``."""
    one_hot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)
    return (one_hot.T @ embeddings) / jnp.sum(one_hot, axis=0)[:, None]


def prototype_logits(query_embeddings: jax.Array, class_prototypes: jax.Array) -> jax.Array:
    """Minus the squared Euclidean distance of each query to each prototype: ``(queries, ways)``."""
    differences = query_embeddings[:, None, :] - class_prototypes[None, :, :]
    return -jnp.sum(jnp.square(differences), axis=-1)


PROTOTYPES = Head(
    "protonet",
    None,
    lambda _, embeddings, labels, ways: prototypes(embeddings, labels, ways),
    lambda _, class_prototypes, queries: prototype_logits(queries, class_prototypes),
)


def make_protonet(
    embedding: Learner,
    ways: int,
    *,
    execution: Execution = CPU,
    compute_dtype: str = "float32",
) -> MetaLearner:
    """A prototypical network over ``embedding`` (e.g. ``conv4_learner(key, ways=0)``).

    ``execution`` schedules it as it does a gradient-based meta-learner (its
    ``task_chunk``: 0 vmaps over all tasks at once); ``compute_dtype="bfloat16"`` runs the
    embedding in bfloat16, its parameters and the distances staying float32.
    """
    return make_closed_form(
        embedding, ways, PROTOTYPES, execution=execution, compute_dtype=compute_dtype
    )
