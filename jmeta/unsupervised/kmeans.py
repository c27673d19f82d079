"""k-means as pure jitted functions: greedy k-means++, Lloyd under ``lax.while_loop``, restarts as
one ``vmap``.

The semantics are scikit-learn's ``KMeans(algorithm="lloyd")``: ``tol`` is relative to the
mean feature variance and compared with the summed squared centre shift, iteration stops
early on "strict convergence" (no label changed), empty clusters take the points farthest
from their centres, and a final assignment makes the labels those of the returned centres.

Two deliberate differences, both so that a sample weight of ``w`` means exactly what ``w``
copies of the row mean: the data are centred on their *weighted* mean and ``tol`` uses the
weighted variance (scikit-learn's unweighted ones are the same when no weights are given),
and k-means++ draws its points by inverse CDF over the rows in a canonical order (sorted by
a fixed projection), so the draw depends on the points and their weights, not on the order
the rows come in. A row of zero weight is never drawn as a centre.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jmeta.sharding import check_mesh, pad_rows, sum_over
from jmeta.unsupervised.distances import (
    default_chunk_size,
    map_row_chunks,
    nearest_centres,
    squared_distances_to,
)
from jmeta.unsupervised.validation import (
    as_sample_weight,
    check_data,
    check_key,
    check_num_clusters,
)
from jmeta.validation import check_choice, check_non_negative_float, check_positive_int

INITS = ("k-means++", "random")


class KMeansResult(NamedTuple):
    """A fitted k-means: ``centres`` ``(k, d)``, ``labels`` ``(n,)``, ``inertia`` (the
    weighted sum of squared distances to the nearest centre) and ``num_iters``."""

    centres: jax.Array
    labels: jax.Array
    inertia: jax.Array
    num_iters: jax.Array


def _canonical_order(x: jax.Array) -> jax.Array:
    """A row order that depends only on the rows' values: sorted by a fixed random projection."""
    direction = jax.random.normal(jax.random.key(0), (x.shape[1],), x.dtype)
    return jnp.argsort(x @ direction, stable=True)


def _inverse_cdf(key: jax.Array, mass: jax.Array, order: jax.Array, size: int) -> jax.Array:
    """``size`` row indices drawn with probability proportional to ``mass`` (rows taken in
    ``order``); ``side="right"`` never lands on a row of zero mass."""
    cumulative = jnp.cumsum(mass[order])
    targets = jax.random.uniform(key, (size,), mass.dtype) * cumulative[-1]
    positions = jnp.searchsorted(cumulative, targets, side="right")
    return order[jnp.clip(positions, 0, mass.shape[0] - 1)]


def _plusplus(
    key: jax.Array, x: jax.Array, sample_weight: jax.Array, num_clusters: int, num_local_trials: int
) -> tuple[jax.Array, jax.Array]:
    """Greedy k-means++ (scikit-learn's ``_kmeans_plusplus``), one jitted ``fori_loop``.

    The state is the ``(k, d)`` centres and the ``(n,)`` squared distance of every row to
    its closest centre so far; each step scores ``num_local_trials`` candidates, a
    ``(trials, n)`` buffer, and keeps the one that lowers the potential most.
    """
    x_sq = jnp.sum(x * x, axis=1)
    order = _canonical_order(x)
    first_key, loop_key = jax.random.split(key)
    first = _inverse_cdf(first_key, sample_weight, order, 1)[0]
    centres = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
    indices = jnp.zeros(num_clusters, jnp.int32).at[0].set(first.astype(jnp.int32))
    closest = squared_distances_to(x, x[first][None], x_sq)[0]

    def add_centre(c, carry):
        centres, indices, closest = carry
        candidates = _inverse_cdf(
            jax.random.fold_in(loop_key, c), sample_weight * closest, order, num_local_trials
        )
        distances = jnp.minimum(closest[None, :], squared_distances_to(x, x[candidates], x_sq))
        best = jnp.argmin(distances @ sample_weight)
        chosen = candidates[best]
        return (
            centres.at[c].set(x[chosen]),
            indices.at[c].set(chosen.astype(jnp.int32)),
            distances[best],
        )

    centres, indices, _ = jax.lax.fori_loop(
        1, num_clusters, add_centre, (centres, indices, closest)
    )
    return centres, indices


def local_trials(num_local_trials: int | None, num_clusters: int) -> int:
    """k-means++ candidates per centre: scikit-learn's ``2 + int(log k)`` unless given."""
    if num_local_trials is None:
        return 2 + int(math.log(num_clusters))
    return check_positive_int("num_local_trials", num_local_trials)


def _random_rows(
    key: jax.Array, x: jax.Array, sample_weight: jax.Array, num_clusters: int
) -> jax.Array:
    """``num_clusters`` distinct rows drawn with probability proportional to their weight."""
    rows = jax.random.choice(
        key, x.shape[0], (num_clusters,), replace=False, p=sample_weight / jnp.sum(sample_weight)
    )
    return x[rows]


def _farthest(x, sample_weight, labels, sq_distances, count):
    """The ``count`` rows farthest from their centres (zero-weight rows last): their
    farness, rows, weights and labels, the candidates an empty cluster may take."""
    # Zero-weight rows are never moved: they would found a cluster of weight zero.
    farness = jnp.where(sample_weight > 0, sq_distances, -1)
    farness, rows = jax.lax.top_k(farness, min(count, x.shape[0]))
    return farness, x[rows], sample_weight[rows], labels[rows]


def _relocate_empty(candidates, sums, weights):
    """Moves each empty cluster to one of the points farthest from their centres
    (scikit-learn's ``_relocate_empty_clusters_dense``), taking the point out of its old
    cluster's sums; farthest first, one point per empty cluster. ``candidates`` is
    ``_farthest``'s answer (on a mesh, the devices' answers gathered: the global farthest
    rows are among each device's farthest)."""
    num_clusters = weights.shape[0]
    farness, rows, row_weights, row_labels = candidates
    _, farthest = jax.lax.top_k(farness, min(num_clusters, farness.shape[0]))
    empty = weights == 0
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, farthest.shape[0] - 1)
    moved = farthest[rank]  # (k,): the candidate each empty cluster takes
    moved_weight = jnp.where(empty, row_weights[moved], 0)
    moved_sum = rows[moved] * moved_weight[:, None]
    sums = sums.at[row_labels[moved]].add(-moved_sum)
    weights = weights.at[row_labels[moved]].add(-moved_weight)
    sums = jnp.where(empty[:, None], moved_sum, sums)
    weights = jnp.where(empty, moved_weight, weights)
    return sums, weights


def _lloyd(
    x: jax.Array,
    sample_weight: jax.Array,
    centres: jax.Array,
    max_iter: jax.Array,
    tol: jax.Array,
    chunk_size: int,
    axis: str | None = None,
) -> KMeansResult:
    """Lloyd's iterations from ``centres`` (traced ``max_iter`` and absolute ``tol``).

    With ``axis`` (inside ``shard_map``) the rows are this device's share: distances and
    labels stay local, and each iteration's cluster sums, weights and count of changed
    labels are one ``psum`` of one flat vector.
    """
    num_clusters = centres.shape[0]
    x_sq = jnp.sum(x * x, axis=1)
    weighted_x = x * sample_weight[:, None]

    def total(*parts):
        return parts if axis is None else sum_over(parts, axis)

    def candidates(labels, sq_distances):
        found = _farthest(x, sample_weight, labels, sq_distances, num_clusters)
        if axis is None:
            return found
        # Gathered as a psum of each device's slot, so that every device holds the same
        # (invariant) candidates, as the branch without empty clusters does.
        devices, index = jax.lax.axis_size(axis), jax.lax.axis_index(axis)

        def gather(a):
            slots = jnp.zeros((devices, *a.shape), a.dtype).at[index].set(a)
            return jax.lax.psum(slots, axis).reshape(devices * a.shape[0], *a.shape[1:])

        return jax.tree.map(gather, found)

    def new_centres(labels, sq_distances, changed):
        sums = jax.ops.segment_sum(weighted_x, labels, num_clusters)
        weights = jax.ops.segment_sum(sample_weight, labels, num_clusters)
        sums, weights, changed = total(sums, weights, changed)
        sums, weights = jax.lax.cond(
            jnp.any(weights == 0),
            lambda: _relocate_empty(candidates(labels, sq_distances), sums, weights),
            lambda: (sums, weights),
        )
        # A cluster left with zero weight keeps its sum, as scikit-learn's _average_centers does.
        centres = jnp.where(
            weights[:, None] > 0, sums / jnp.where(weights > 0, weights, 1)[:, None], sums
        )
        return centres, changed

    def not_done(state):
        iteration, _, _, strict, shifted_little = state
        return (iteration < max_iter) & ~strict & ~shifted_little

    def iterate(state):
        iteration, centres, previous_labels, _, _ = state
        labels, sq_distances = nearest_centres(x, centres, chunk_size, x_sq)
        changed = jnp.sum(labels != previous_labels).astype(x.dtype)
        updated, changed = new_centres(labels, sq_distances, changed)
        shift = jnp.sum((updated - centres) ** 2)
        return iteration + 1, updated, labels, changed == 0, shift <= tol

    false = jnp.zeros((), bool)
    no_labels = jnp.full(x.shape[0], -1, jnp.int32)
    if axis is not None:  # labels are per device ("varying"), like the rows they label
        no_labels = jax.lax.pcast(no_labels, axis, to="varying")
    start = (jnp.zeros((), jnp.int32), centres, no_labels, false, false)
    num_iters, centres, labels, strict, _ = jax.lax.while_loop(not_done, iterate, start)
    # Under strict convergence the last labels are already those of the final centres
    # (computed from the same labels); otherwise one more assignment, as scikit-learn does.
    labels = jax.lax.cond(
        strict, lambda: labels, lambda: nearest_centres(x, centres, chunk_size, x_sq)[0]
    )
    (inertia,) = total(_inertia(x, sample_weight, centres, labels, chunk_size))
    return KMeansResult(centres, labels, inertia, num_iters)


def _restarts(mesh, chunk_size: int):
    """``(x, sample_weight, starts, max_iter, tol) -> KMeansResult`` of every start
    (vmapped), on one device or, with a ``mesh``, with the rows sharded over it."""

    def run(x, sample_weight, starts, max_iter, tol, axis=None):
        return jax.vmap(_lloyd, in_axes=(None, None, 0, None, None, None, None))(
            x, sample_weight, starts, max_iter, tol, chunk_size, axis
        )

    if mesh is None:
        return run
    axis = mesh.axis_names[0]
    by_row, whole = PartitionSpec(axis), PartitionSpec()
    return jax.shard_map(
        functools.partial(run, axis=axis),
        mesh=mesh,
        in_specs=(by_row, by_row, whole, whole, whole),
        out_specs=KMeansResult(whole, PartitionSpec(None, axis), whole, whole),
    )


def _inertia(x, sample_weight, centres, labels, chunk_size):
    """Weighted squared distances to the assigned centres, from differences (not the
    expansion, whose cancellation would cost digits in float32)."""

    def chunk(x_chunk, labels_chunk):
        return jnp.sum((x_chunk - centres[labels_chunk]) ** 2, axis=1)

    return map_row_chunks(chunk, x, chunk_size, labels) @ sample_weight


@functools.partial(
    jax.jit,
    static_argnames=("num_clusters", "init", "n_init", "chunk_size", "num_local_trials", "mesh"),
)
def _kmeans(
    key,
    x,
    sample_weight,
    init_centres,
    max_iter,
    tol,
    *,
    num_clusters,
    init,
    n_init,
    chunk_size,
    num_local_trials,
    mesh,
):
    total = jnp.sum(sample_weight)
    mean = sample_weight @ x / total
    centred = x - mean[None, :]
    variance = sample_weight @ (centred * centred) / total
    tol = tol * jnp.mean(variance)
    if init_centres is not None:
        starts = (init_centres - mean[None, :])[None]
    else:

        def initial(key):
            if init == "k-means++":
                return _plusplus(key, centred, sample_weight, num_clusters, num_local_trials)[0]
            return _random_rows(key, centred, sample_weight, num_clusters)

        # Restart i always draws from fold_in(key, i), so more restarts only add candidates.
        # On a mesh the seeding runs on the sharded rows as plain jit (XLA gathers what its
        # sort and draws need); the iterations, where the time goes, are per-device.
        starts = jax.vmap(lambda i: initial(jax.random.fold_in(key, i)))(jnp.arange(n_init))
    results = _restarts(mesh, chunk_size)(centred, sample_weight, starts, max_iter, tol)
    # The lowest inertia wins; ties go to the first restart.
    result = jax.tree.map(lambda leaf: leaf[jnp.argmin(results.inertia)], results)
    return result._replace(centres=result.centres + mean[None, :])


def kmeans(
    key: jax.Array,
    x: Any,
    num_clusters: int,
    *,
    init: Any = "k-means++",
    n_init: int = 1,
    sample_weight: Any = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int | None = None,
    num_local_trials: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> KMeansResult:
    """k-means clustering of the rows of ``x``, in one jitted call.

    Args:
      key: a JAX PRNG key (the same key gives the same labels, bit for bit).
      x: data ``(n, d)``, float32 (float64 with JAX's x64 enabled).
      num_clusters: ``k``, at most ``n``.
      init: ``"k-means++"`` (greedy, as scikit-learn), ``"random"`` (``k`` distinct rows
        drawn by weight) or an array of initial centres ``(k, d)``.
      n_init: restarts, run as one ``vmap``; the lowest inertia wins (ignored for an array init).
      sample_weight: non-negative weights ``(n,)``, default all ones.
      max_iter: the most Lloyd iterations.
      tol: stop when the summed squared centre shift is at most ``tol`` times the mean
        feature variance.
      chunk_size: rows per distance product (default: about 2**19 / k).
      num_local_trials: k-means++ candidates per centre (default ``2 + int(log k)``).
      mesh: a one-axis ``jax.sharding.Mesh`` (``jmeta.task_mesh(n)``) to split the rows
        over; Lloyd's iterations then run per device with one all-reduce each. Rows are
        padded to a multiple of the mesh with rows of weight zero, which change nothing.

    Returns:
      ``KMeansResult(centres, labels, inertia, num_iters)``.

    Example::

      result = kmeans(jax.random.key(0), x, 10, n_init=4)
      result.labels, result.inertia
    """
    x = check_data("x", x)
    num_clusters = check_num_clusters(num_clusters, x.shape[0])
    n_init = check_positive_int("n_init", n_init)
    max_iter = check_positive_int("max_iter", max_iter)
    tol = check_non_negative_float("tol", tol)
    key = check_key(key)
    sample_weight = as_sample_weight(sample_weight, x.shape[0], x.dtype)
    init_centres = None
    if isinstance(init, str):
        check_choice("init", init, INITS)
    else:
        init_centres = check_data("init", init, dtype=x.dtype)
        if init_centres.shape != (num_clusters, x.shape[1]):
            raise ValueError(
                f"init must have shape (num_clusters, n_features) = {(num_clusters, x.shape[1])}, "
                f"got {init_centres.shape}"
            )
        init, n_init = "array", 1
    chunk_size = (
        default_chunk_size(x.shape[0], num_clusters)
        if chunk_size is None
        else check_positive_int("chunk_size", chunk_size)
    )
    num_local_trials = local_trials(num_local_trials, num_clusters)
    num_rows = x.shape[0]
    if mesh is not None:
        check_mesh(mesh)
        x, sample_weight = pad_rows((x, sample_weight), mesh)
    result = _kmeans(
        key,
        x,
        sample_weight,
        init_centres,
        jnp.asarray(max_iter, jnp.int32),
        jnp.asarray(tol, x.dtype),
        num_clusters=num_clusters,
        init=init,
        n_init=n_init,
        chunk_size=chunk_size,
        num_local_trials=num_local_trials,
        mesh=mesh,
    )
    if x.shape[0] != num_rows:
        result = result._replace(labels=result.labels[:num_rows])
    return result


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_local_trials"))
def _plusplus_jit(key, x, sample_weight, *, num_clusters, num_local_trials):
    return _plusplus(key, x, sample_weight, num_clusters, num_local_trials)


def kmeans_plusplus(
    key: jax.Array,
    x: Any,
    num_clusters: int,
    *,
    sample_weight: Any = None,
    num_local_trials: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy k-means++ seeding (``sklearn.cluster.kmeans_plusplus``), one jitted call.

    The first centre is drawn with probability proportional to the sample weight; each
    next one from ``num_local_trials`` (default ``2 + int(log k)``) candidates drawn
    proportionally to weight x squared distance, keeping the candidate that lowers the
    weighted potential most.

    Returns:
      ``centres`` ``(k, d)`` and the row ``indices`` ``(k,)`` they were taken from.
    """
    x = check_data("x", x)
    num_clusters = check_num_clusters(num_clusters, x.shape[0])
    key = check_key(key)
    sample_weight = as_sample_weight(sample_weight, x.shape[0], x.dtype)
    num_local_trials = local_trials(num_local_trials, num_clusters)
    return _plusplus_jit(
        key, x, sample_weight, num_clusters=num_clusters, num_local_trials=num_local_trials
    )


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _predict(x, centres, sample_weight, chunk_size):
    labels, _ = nearest_centres(x, centres, chunk_size)
    return labels, _inertia(x, sample_weight, centres, labels, chunk_size)


def kmeans_predict(
    x: Any, centres: Any, *, sample_weight: Any = None, chunk_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Nearest-centre labels of the rows of ``x`` and their weighted inertia."""
    x = check_data("x", x)
    centres = check_data("centres", centres, dtype=x.dtype)
    if centres.shape[1] != x.shape[1]:
        raise ValueError(f"centres have {centres.shape[1]} features but x has {x.shape[1]}")
    sample_weight = as_sample_weight(sample_weight, x.shape[0], x.dtype)
    chunk_size = chunk_size or default_chunk_size(x.shape[0], centres.shape[0])
    return _predict(x, centres, sample_weight, chunk_size)
