"""Pseudo-labelled N-way K-shot tasks from k-means partitions (CACTUs; Hsu, Levine & Finn 2019).

A *partition* is one clustering of all ``n`` points; its cluster ids are pseudo-labels.
``cactus_partitions`` builds ``P`` of them as CACTUs does: partition 0 clusters the embedding
as it is, every other one the embedding with each dimension multiplied by its own factor
drawn from U[0, 1], so that the partitions disagree and the tasks stay diverse. A label of
``-1`` marks a point that belongs to no cluster (self-training leaves out the points it is
not confident about).

Clusters have unequal sizes, so a partition is stored as padded member lists
``members (P, C, M)`` with ``counts (P, C)``: the sampler is then one pure, jittable,
``vmap``-able function of a key, with no host loop and no ragged array. A task picks one
partition, ``ways`` of its *usable* clusters (at least ``shots + queries`` members), and
``shots + queries`` distinct members of each (a top-k over random scores, with the padding
scored last), so a task never mixes partitions and never repeats a point.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.tasks.base import Task, TaskSampler
from jmeta.tasks.episodes import episode_from_classes
from jmeta.unsupervised.kmeans import kmeans
from jmeta.unsupervised.validation import check_data, check_key, check_num_clusters
from jmeta.validation import check_non_negative_int, check_positive_int


class Partitions(NamedTuple):
    """``P`` partitions of ``n`` points into at most ``C`` clusters, as padded member lists.

    Attributes:
      labels: ``(P, n)`` int32 cluster of every point, ``-1`` for none.
      members: ``(P, C, M)`` int32 point indices of each cluster, padded with 0 past ``counts``.
      counts: ``(P, C)`` int32 members of each cluster.
      min_size: the fewest members a cluster needs to be drawn (``shots + queries``).
    """

    labels: jax.Array
    members: jax.Array
    counts: jax.Array
    min_size: int

    @property
    def usable(self) -> jax.Array:
        """``(P, C)``: clusters with at least ``min_size`` members."""
        return self.counts >= self.min_size


def cluster_members(
    labels: jax.Array, num_clusters: int, max_members: int
) -> tuple[jax.Array, jax.Array]:
    """Padded member lists of one partition: ``members (C, M)`` and ``counts (C,)``.

    ``labels`` ``(n,)`` holds cluster ids in ``0..C-1`` or ``-1``; ``max_members`` (static)
    must be at least the largest cluster. A stable sort by label lays each cluster's points
    out contiguously, so cluster ``c``'s members are one slice of the sorted order.
    """
    num_points = labels.shape[0]
    sort_key = jnp.where(labels < 0, num_clusters, labels)
    order = jnp.argsort(sort_key, stable=True).astype(jnp.int32)
    counts = jnp.zeros(num_clusters, jnp.int32).at[sort_key].add(1, mode="drop")
    starts = jnp.cumsum(counts) - counts
    slots = jnp.arange(max_members, dtype=jnp.int32)
    positions = jnp.clip(starts[:, None] + slots[None, :], 0, num_points - 1)
    members = jnp.where(slots[None, :] < counts[:, None], order[positions], 0)
    return members, counts


def make_partitions(labels: Any, num_clusters: int, min_size: int) -> Partitions:
    """``Partitions`` from stacked labels ``(P, n)`` (one host read for the padded width)."""
    labels = jnp.asarray(labels, jnp.int32)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (num_partitions, num_points), got {labels.shape}")
    valid = np.asarray(labels)
    if valid.max() >= num_clusters:
        raise ValueError(f"labels hold cluster {valid.max()} but num_clusters is {num_clusters}")
    largest = max(
        1, max(int(np.bincount(row[row >= 0], minlength=1).max(initial=0)) for row in valid)
    )
    # A power of two: partitions of other sizes then share compiled samplers.
    largest = 1 << (largest - 1).bit_length()
    members, counts = jax.vmap(lambda row: cluster_members(row, num_clusters, largest))(labels)
    return Partitions(labels, members, counts, check_positive_int("min_size", min_size))


def cactus_partitions(
    key: Any,
    embedding: Any,
    num_clusters: int,
    num_partitions: int,
    min_size: int,
    min_usable: int,
    *,
    max_redraws: int = 10,
    n_init: int = 1,
    max_iter: int = 100,
    cluster: Callable | None = None,
    mesh: Any = None,
) -> tuple[Partitions, jax.Array]:
    """CACTUs' ``P`` k-means partitions of ``embedding`` ``(n, d)``.

    Partition 0 clusters the embedding as it is, partition ``p > 0`` the embedding with
    each dimension multiplied by its own U[0, 1] factor. A partition with fewer than
    ``min_usable`` clusters of ``min_size`` or more members (``ways`` for tasks of
    ``shots + queries`` points a class) is redrawn with new factors, at most ``max_redraws``
    times; then a ``ValueError`` says how many clusters were usable.

    Args:
      key: PRNG key (or int seed): same key, same partitions.
      embedding: ``(n, d)`` float points.
      num_clusters: ``k`` of every k-means.
      num_partitions: ``P``.
      min_size: ``shots + queries``; smaller clusters are never drawn.
      min_usable: ``ways``.
      max_redraws: redraws allowed per partition.
      n_init, max_iter: passed to ``kmeans``.
      cluster: ``(key, scaled_embedding, partition) -> labels (n,)`` in place of plain
        k-means (self-training passes its confidence-filtered clustering; ``-1`` labels allowed).
      mesh: split every k-means's rows over this one-axis mesh (``kmeans``'s ``mesh``).

    Returns:
      ``(partitions, factors)``, ``factors`` ``(P, d)`` the scale of each partition's
      dimensions (row 0 all ones).
    """
    embedding = check_data("embedding", embedding)
    num_clusters = check_num_clusters(num_clusters, embedding.shape[0])
    num_partitions = check_positive_int("num_partitions", num_partitions)
    key = check_key(key)
    labels, scales = [], []
    for partition in range(num_partitions):
        for attempt in range(max_redraws + 1):
            draw_key = jax.random.fold_in(jax.random.fold_in(key, partition), attempt)
            factor_key, kmeans_key = jax.random.split(draw_key)
            factors = jax.random.uniform(factor_key, (embedding.shape[1],), embedding.dtype)
            if partition == 0:
                factors = jnp.ones_like(factors)
            scaled = embedding * factors[None, :]
            if cluster is None:
                partition_labels = kmeans(
                    kmeans_key, scaled, num_clusters, n_init=n_init, max_iter=max_iter, mesh=mesh
                ).labels
            else:
                partition_labels = cluster(kmeans_key, scaled, partition)
            kept = np.asarray(partition_labels)
            usable = int(np.sum(np.bincount(kept[kept >= 0], minlength=num_clusters) >= min_size))
            if usable >= min_usable:
                break
        else:
            raise ValueError(
                f"partition {partition}: only {usable} of num_clusters = {num_clusters} clusters "
                "have "
                f"shots + queries = {min_size} points or more after {max_redraws} redraws, but "
                f"ways = {min_usable} are needed; use fewer clusters, ways, shots or queries, or "
                "more data"
            )
        # The host copy: labels of a k-means on a mesh are sharded by row, and a task
        # sampler that closes over mesh-sharded arrays cannot run inside shard_map.
        labels.append(jnp.asarray(kept))
        scales.append(factors)
    return make_partitions(jnp.stack(labels), num_clusters, min_size), jnp.stack(scales)


def check_task_shape(partitions: Partitions, ways: int, shots: int, queries: int) -> None:
    """Refuses ``ways``/``shots``/``queries`` that no partition can serve."""
    check_positive_int("ways", ways)
    check_positive_int("shots", shots)
    check_positive_int("queries", queries)
    if shots + queries > partitions.min_size:
        raise ValueError(
            f"shots + queries = {shots + queries} but the partitions were built for clusters of "
            f"min_size = {partitions.min_size}"
        )
    usable = np.asarray(partitions.usable).sum(axis=1)
    if usable.max() < ways:
        raise ValueError(
            f"ways = {ways} but no partition has more than {usable.max()} usable clusters"
        )


def random_shift(key: jax.Array, image: jax.Array, max_shift: int) -> jax.Array:
    """``image`` ``(H, W, C)`` translated by up to ``max_shift`` pixels each way, zero-filled."""
    padded = jnp.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(key, (2,), 0, 2 * max_shift + 1)
    return jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), image.shape)


def draw_task(
    key: jax.Array,
    data: jax.Array,
    members: jax.Array,
    counts: jax.Array,
    eligible: jax.Array,
    min_size: int,
    ways: int,
    shots: int,
    queries: int,
    max_shift: int = 0,
) -> Task:
    """One pseudo-labelled task, a pure function of arrays (``make_pseudo_task_sampler``'s body).

    ``members``/``counts`` are ``Partitions`` fields, ``eligible`` the indices of the
    partitions with at least ``ways`` clusters of ``min_size`` members; the ints are static.
    """
    max_members = members.shape[2]
    per_class = shots + queries

    def draw_members(key, cluster_members, count):
        # Random scores with the padding scored below every real member: the top
        # ``per_class`` are distinct members, uniformly drawn without replacement.
        scores = jnp.where(
            jnp.arange(max_members) < count, jax.random.uniform(key, (max_members,)), -1.0
        )
        return cluster_members[jax.lax.top_k(scores, per_class)[1]]

    partition_key, cluster_key, member_key, label_key, shift_key = jax.random.split(key, 5)
    partition = eligible[jax.random.randint(partition_key, (), 0, eligible.shape[0])]
    weights = (counts[partition] >= min_size).astype(jnp.float32)
    clusters = jax.random.choice(
        cluster_key, weights.shape[0], (ways,), replace=False, p=weights / weights.sum()
    )
    points = jax.vmap(draw_members)(
        jax.random.split(member_key, ways),
        members[partition, clusters],
        counts[partition, clusters],
    )
    examples = data[points]
    if max_shift:
        keys = jax.random.split(shift_key, points.shape)
        examples = jax.vmap(jax.vmap(lambda k, image: random_shift(k, image, max_shift)))(
            keys, examples
        )
    return episode_from_classes(label_key, examples, shots)


def eligible_partitions(partitions: Partitions, ways: int) -> jax.Array:
    """Indices of the partitions with at least ``ways`` usable clusters (host read)."""
    return jnp.asarray(np.flatnonzero(np.asarray(partitions.usable).sum(axis=1) >= ways))


def make_pseudo_task_sampler(
    data: Any, partitions: Partitions, ways: int, shots: int, queries: int, *, max_shift: int = 0
) -> TaskSampler:
    """Returns ``sample(key) -> Task`` of one pseudo-labelled N-way K-shot task.

    The task's inputs are rows of ``data`` (``(n, ...)``: images or features, whatever the
    learner reads); its labels are ``0..ways-1`` for the ``ways`` clusters drawn, in a random
    order. Support ``x`` is ``(ways * shots, ...)`` grouped by class, as
    ``jmeta.tasks.make_episode_sampler`` lays it out. Only partitions with at least ``ways``
    usable clusters are drawn. Checks run here, on the host, before anything is traced.

    ``max_shift > 0`` translates every image of the task by its own random offset of up to
    that many pixels (images ``(n, H, W, C)`` only): a label-free augmentation that keeps the
    network from learning the pixel layout the PCA clusters were drawn from.
    """
    check_task_shape(partitions, ways, shots, queries)
    data = jnp.asarray(data)
    if data.shape[0] != partitions.labels.shape[1]:
        raise ValueError(
            f"data has {data.shape[0]} rows but the partitions cover {partitions.labels.shape[1]} "
            "points"
        )
    max_shift = check_non_negative_int("max_shift", max_shift)
    if max_shift and data.ndim != 4:
        raise ValueError(
            f"max_shift = {max_shift} translates images (n, H, W, C); data has shape {data.shape}"
        )
    eligible = eligible_partitions(partitions, ways)
    members, counts, min_size = partitions.members, partitions.counts, partitions.min_size

    def sample(key: jax.Array) -> Task:
        return draw_task(
            key, data, members, counts, eligible, min_size, ways, shots, queries, max_shift
        )

    return sample
