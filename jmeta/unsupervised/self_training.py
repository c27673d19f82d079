"""Self-training of pseudo-labels: re-cluster in the learned features, keep the confident labels.

One round on one partition (``self_train_partition``), after meta-training has changed the
features:

1. k-means on the learned embedding (DeepCluster's alternation: the features the learner
   learned replace the pixels); partition 0 starts from the previous round's centres
   recomputed in the new features, so its cluster ids carry over and "labels changed" means
   something.
2. Every point is scored against the new centres, logits ``-|z - c|² / T``. The temperature
   ``T`` is stored as ``log T`` and learned by gradient descent on the query cross-entropy of
   pseudo-labelled tasks drawn from the new partition, which no training step has seen:
   temperature scaling (Guo et al. 2017) of the prototype classifier, with the prototypes
   estimated from ``shots`` points as at test time.
3. A point whose ``softmax(logits / T)`` confidence is at least ``threshold`` takes the
   arg-max cluster as its label; the others get ``-1`` and leave the tasks; the centres are
   recomputed from the accepted points.

Prototypes of ``shots`` points are noisier than centres of whole clusters, so the learned
``T`` is, if anything, too high for the centre logits: the filter errs towards rejecting.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta.errors import NonFiniteError
from jmeta.losses import cross_entropy
from jmeta.optim import minimise
from jmeta.protonet import prototype_logits, prototypes
from jmeta.tasks.base import Task
from jmeta.unsupervised.distances import map_row_chunks
from jmeta.unsupervised.kmeans import kmeans
from jmeta.unsupervised.tasks import (
    Partitions,
    check_task_shape,
    draw_task,
    eligible_partitions,
    make_partitions,
)
from jmeta.validation import check_positive_int


class SelfTrainingRound(NamedTuple):
    """One partition after a self-training round.

    Attributes:
      labels: ``(n,)`` int32: the arg-max cluster where confident, ``-1`` elsewhere.
      centres: ``(C, d)`` means of the accepted points (the k-means centre where none).
      confidence: ``(n,)`` ``max softmax(logits / T)`` of every point.
      log_temperature: the learned ``log T``.
      kmeans_labels: ``(n,)`` the k-means labels before the confidence filter.
    """

    labels: jax.Array
    centres: jax.Array
    confidence: jax.Array
    log_temperature: jax.Array
    kmeans_labels: jax.Array


def centre_logits(
    embedding: jax.Array, centres: jax.Array, log_temperature: jax.Array
) -> jax.Array:
    """``-|z - c|² / T`` for every point and centre, ``(n, C)``."""
    sq = (
        jnp.sum(embedding * embedding, axis=1)[:, None]
        - 2 * embedding @ centres.T
        + jnp.sum(centres * centres, axis=1)[None, :]
    )
    return -jnp.maximum(sq, 0) / jnp.exp(log_temperature)


def _task_logits(task: Task, ways: int) -> jax.Array:
    """Prototype logits of one task on raw embedding vectors (temperature 1)."""
    return prototype_logits(task.query.x, prototypes(task.support.x, task.support.y, ways))


@functools.partial(jax.jit, static_argnames="num_steps")
def _fit_log_temperature(
    logits: jax.Array, labels: jax.Array, initial: jax.Array, num_steps: int, learning_rate: float
) -> jax.Array:
    """Adam on ``log T`` for the cross-entropy of ``logits / T``."""
    loss = lambda log_temperature: cross_entropy(logits / jnp.exp(log_temperature), labels)
    return minimise(loss, initial, optax.adam(learning_rate), num_steps)[0]


@functools.partial(jax.jit, static_argnames=("min_size", "ways", "shots", "queries", "num_tasks"))
def _temperature_problem(
    key, embedding, members, counts, eligible, min_size, ways, shots, queries, num_tasks
):
    """Query logits (temperature 1) and labels of ``num_tasks`` pseudo-tasks, flattened."""
    tasks = jax.vmap(
        lambda k: draw_task(k, embedding, members, counts, eligible, min_size, ways, shots, queries)
    )(jax.random.split(key, num_tasks))
    logits = jax.vmap(lambda task: _task_logits(task, ways))(tasks)
    return logits.reshape((-1, ways)), tasks.query.y.reshape(-1)


def learn_log_temperature(
    key: jax.Array,
    embedding: jax.Array,
    partitions: Partitions,
    ways: int,
    shots: int,
    queries: int,
    *,
    num_tasks: int = 256,
    num_steps: int = 300,
    learning_rate: float = 0.05,
) -> jax.Array:
    """``log T`` that minimises the query cross-entropy of ``num_tasks`` pseudo-labelled
    tasks drawn from ``partitions`` (on ``embedding``), by Adam on ``log T``.

    It starts from ``log`` of the mean |logit| so that the scale of the embedding does not
    decide how many steps it takes (the loss is unimodal in ``log T``).
    """
    check_task_shape(partitions, ways, shots, queries)
    logits, labels = _temperature_problem(
        key,
        jnp.asarray(embedding),
        partitions.members,
        partitions.counts,
        eligible_partitions(partitions, ways),
        partitions.min_size,
        ways,
        shots,
        queries,
        check_positive_int("num_tasks", num_tasks),
    )
    initial = jnp.log(jnp.maximum(jnp.mean(jnp.abs(logits)), 1e-12))
    return _fit_log_temperature(
        logits, labels, initial, check_positive_int("num_steps", num_steps), learning_rate
    )


def confident_labels(
    embedding: jax.Array, centres: jax.Array, log_temperature: jax.Array, threshold: float
) -> tuple[jax.Array, jax.Array]:
    """``(labels, confidence)``: the arg-max cluster where ``max softmax(logits / T) >=
    threshold``, ``-1`` elsewhere, computed over row chunks (no ``n x C`` buffer at once)."""

    def chunk(rows):
        probabilities = jax.nn.softmax(centre_logits(rows, centres, log_temperature), axis=-1)
        return jnp.argmax(probabilities, axis=-1).astype(jnp.int32), jnp.max(probabilities, axis=-1)

    labels, confidence = map_row_chunks(chunk, embedding, 1024)
    return jnp.where(confidence >= threshold, labels, -1), confidence


def centres_from_labels(embedding: jax.Array, labels: jax.Array, fallback: jax.Array) -> jax.Array:
    """Mean of each cluster's labelled points; ``fallback``'s row for a cluster with none."""
    num_clusters = fallback.shape[0]
    one_hot = jax.nn.one_hot(labels, num_clusters, dtype=embedding.dtype)  # -1 gives a zero row
    counts = one_hot.sum(axis=0)
    sums = one_hot.T @ embedding
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], fallback)


def self_train_partition(
    key: Any,
    embedding: Any,
    num_clusters: int,
    ways: int,
    shots: int,
    queries: int,
    threshold: float,
    *,
    init: Any = "k-means++",
    temperature_tasks: int = 256,
    temperature_steps: int = 300,
    max_iter: int = 100,
    mesh: Any = None,
) -> SelfTrainingRound:
    """One self-training round on one partition (the module docstring's steps 1-3).

    Args:
      key: PRNG key.
      embedding: ``(n, d)`` learned features (scaled, for a rescaled partition).
      num_clusters: ``C``.
      ways, shots, queries: the shape of the temperature's pseudo-labelled tasks.
      threshold: the least confidence that keeps a label, in ``[0, 1)``.
      init: k-means initialisation, ``"k-means++"`` or centres ``(C, d)`` (the previous
        round's, recomputed in these features).
      temperature_tasks, temperature_steps: tasks and Adam steps that learn ``log T``.
      max_iter: Lloyd iterations.
      mesh: split the k-means's rows over this one-axis mesh (``kmeans``'s ``mesh``).
    """
    embedding = jnp.asarray(embedding)
    kmeans_key, temperature_key = jax.random.split(key)
    clusters = kmeans(kmeans_key, embedding, num_clusters, init=init, max_iter=max_iter, mesh=mesh)
    partitions = make_partitions(clusters.labels[None, :], num_clusters, shots + queries)
    usable = int(np.asarray(partitions.usable).sum())
    if usable < ways:
        raise ValueError(
            f"self-training: only {usable} of num_clusters = {num_clusters} clusters of the "
            "learned "
            f"features have shots + queries = {shots + queries} points or more, but ways = {ways} "
            "are "
            "needed; use fewer clusters or more data"
        )
    log_temperature = learn_log_temperature(
        temperature_key,
        embedding,
        partitions,
        ways,
        shots,
        queries,
        num_tasks=temperature_tasks,
        num_steps=temperature_steps,
    )
    if not np.isfinite(float(log_temperature)):
        raise NonFiniteError(
            f"self-training's learned log-temperature is {float(log_temperature)}: the embedding "
            "holds NaN or inf (check the meta-training losses) or its pseudo-tasks are degenerate"
        )
    labels, confidence = confident_labels(embedding, clusters.centres, log_temperature, threshold)
    centres = centres_from_labels(embedding, labels, clusters.centres)
    return SelfTrainingRound(labels, centres, confidence, log_temperature, clusters.labels)


def expected_calibration_error(confidence: Any, correct: Any, num_bins: int = 10) -> float:
    """ECE: the mean over equal-width confidence bins of |accuracy - confidence|, weighted by
    the fraction of points in each bin (Guo et al. 2017)."""
    confidence = np.asarray(confidence, np.float64).ravel()
    correct = np.asarray(correct, np.float64).ravel()
    if confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError(
            f"confidence and correct must be non-empty and of one shape, got {confidence.shape} "
            f"and {correct.shape}"
        )
    bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
    error = 0.0
    for b in range(num_bins):
        inside = bins == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)
