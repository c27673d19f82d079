"""Mini-batch k-means (Sculley 2010) with scikit-learn's ``MiniBatchKMeans`` semantics, for
data that need not fit on the device: the data stay on the host, batches are gathered
there and streamed, and each update is one jitted step.

Per step, as scikit-learn does it: assign the batch to the current centres, move each
centre to the weighted mean of everything it has ever been given (a per-centre learning
rate ``1 / count``), now and then re-seed centres that hold under ``reassignment_ratio``
of the largest count, and stop early on the exponentially weighted batch inertia
(``max_no_improvement``) or on a small centre shift (``tol``).

When a batch would hold every row (``batch_size >= n``), each step uses the data
themselves rather than a resample with replacement: the updates are then deterministic,
and a weight of ``w`` means exactly ``w`` copies of the row. The stop flag is read one step
late, so the host gathers the next batch while the device runs this one; the step after a
stop is discarded, so the result is that of a synchronous loop.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jmeta.unsupervised.distances import nearest_centres
from jmeta.unsupervised.kmeans import (
    INITS,
    KMeansResult,
    _plusplus,
    _random_rows,
    kmeans_predict,
    local_trials,
)
from jmeta.unsupervised.validation import (
    check_key,
    check_num_clusters,
    check_sample_weight,
    float_dtype,
)
from jmeta.validation import (
    check_choice,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_int,
)


class MiniBatchState(NamedTuple):
    """Everything a mini-batch step carries (device arrays)."""

    centres: jax.Array  # (k, d)
    counts: jax.Array  # (k,) weight each centre has absorbed
    since_reassign: jax.Array  # () samples seen since the last re-seeding
    ewa_inertia: jax.Array  # () smoothed batch inertia (NaN before the second step)
    ewa_min: jax.Array  # () its lowest value so far
    no_improvement: jax.Array  # () steps since it last fell
    step: jax.Array  # ()
    converged: jax.Array  # ()


def init_state(centres: jax.Array) -> MiniBatchState:
    dtype = centres.dtype
    nan = jnp.full((), jnp.nan, dtype)
    return MiniBatchState(
        centres,
        jnp.zeros(centres.shape[0], dtype),
        jnp.zeros((), jnp.int32),
        nan,
        nan,
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), bool),
    )


def _reseed(key, counts, centres, x, sample_weight, reassignment_ratio):
    """Moves centres holding under ``reassignment_ratio`` of the largest count to rows of the
    batch drawn by weight (scikit-learn: at most half a batch of them, the smallest first)."""
    num_clusters = counts.shape[0]
    batch_size = x.shape[0]
    low = counts < reassignment_ratio * jnp.max(counts)
    limit = int(0.5 * batch_size)
    # Keep only the `limit` lowest counts among the low ones.
    rank = jnp.argsort(jnp.argsort(jnp.where(low, counts, jnp.inf), stable=True), stable=True)
    low = low & (rank < limit)
    draws = min(num_clusters, batch_size)
    rows = jax.random.choice(
        key, batch_size, (draws,), replace=False, p=sample_weight / jnp.sum(sample_weight)
    )
    slot = jnp.clip(jnp.cumsum(low) - 1, 0, draws - 1)
    centres = jnp.where(low[:, None], x[rows[slot]], centres)
    floor = jnp.min(jnp.where(low, jnp.inf, counts))
    counts = jnp.where(low, jnp.where(jnp.isfinite(floor), floor, counts), counts)
    return centres, counts


@functools.partial(
    jax.jit, static_argnames=("num_samples", "reassignment_ratio", "max_no_improvement")
)
def minibatch_step(
    state: MiniBatchState,
    key: jax.Array,
    x: jax.Array,
    sample_weight: jax.Array,
    tol: jax.Array,
    *,
    num_samples: int,
    reassignment_ratio: float,
    max_no_improvement: int | None,
) -> MiniBatchState:
    """One mini-batch update of ``state`` with the batch ``x`` ``(b, d)`` and its weights."""
    num_clusters = state.centres.shape[0]
    batch_size = x.shape[0]
    labels, sq_distances = nearest_centres(x, state.centres)
    batch_inertia = sq_distances @ sample_weight / batch_size
    batch_weight = jax.ops.segment_sum(sample_weight, labels, num_clusters)
    batch_sum = jax.ops.segment_sum(x * sample_weight[:, None], labels, num_clusters)
    counts = state.counts + batch_weight
    centres = jnp.where(
        batch_weight[:, None] > 0,
        (state.centres * state.counts[:, None] + batch_sum)
        / jnp.where(counts > 0, counts, 1)[:, None],
        state.centres,
    )
    since = state.since_reassign + batch_size
    reseed = (reassignment_ratio > 0) & (jnp.any(counts == 0) | (since >= 10 * num_clusters))
    centres, counts = jax.lax.cond(
        reseed,
        _reseed,
        lambda key, counts, centres, *rest: (centres, counts),
        key,
        counts,
        centres,
        x,
        sample_weight,
        reassignment_ratio,
    )
    since = jnp.where(reseed, 0, since)
    shift = jnp.sum((centres - state.centres) ** 2)

    # scikit-learn's _mini_batch_convergence; the first step's inertia is the init's, so it is
    # skipped.
    alpha = min(1.0, batch_size * 2.0 / (num_samples + 1))
    first = state.step == 0
    ewa = jnp.where(
        first,
        state.ewa_inertia,
        jnp.where(
            jnp.isnan(state.ewa_inertia),
            batch_inertia,
            state.ewa_inertia * (1 - alpha) + batch_inertia * alpha,
        ),
    )
    improved = jnp.isnan(state.ewa_min) | (ewa < state.ewa_min)
    ewa_min = jnp.where(first, state.ewa_min, jnp.where(improved, ewa, state.ewa_min))
    no_improvement = jnp.where(
        first, state.no_improvement, jnp.where(improved, 0, state.no_improvement + 1)
    )
    converged = ~first & (tol > 0) & (shift <= tol)
    if max_no_improvement is not None:
        converged = converged | (~first & (no_improvement >= max_no_improvement))
    return MiniBatchState(
        centres, counts, since, ewa, ewa_min, no_improvement, state.step + 1, converged
    )


@functools.partial(jax.jit, static_argnames=("num_clusters", "init", "num_local_trials"))
def _initial_centres(key, x, sample_weight, *, num_clusters, init, num_local_trials):
    if init == "k-means++":
        return _plusplus(key, x, sample_weight, num_clusters, num_local_trials)[0]
    return _random_rows(key, x, sample_weight, num_clusters)


def _host_rng(key: jax.Array) -> np.random.Generator:
    """The host generator of batch indices, seeded from ``key``."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist())


def minibatch_kmeans(
    key: Any,
    x: Any,
    num_clusters: int,
    *,
    batch_size: int = 1024,
    max_iter: int = 100,
    init: Any = "k-means++",
    n_init: int = 1,
    init_size: int | None = None,
    sample_weight: Any = None,
    tol: float = 0.0,
    max_no_improvement: int | None = 10,
    reassignment_ratio: float = 0.01,
    compute_labels: bool = True,
    progress: bool = False,
) -> KMeansResult:
    """Mini-batch k-means of the rows of a host array ``x`` (numpy, or a ``np.memmap``).

    Args:
      key: JAX PRNG key or int seed.
      x: data ``(n, d)`` on the host; batches are gathered there and sent to the device.
      num_clusters: ``k``.
      batch_size: rows per step.
      max_iter: passes over the data: ``max_iter * n // batch_size`` steps at most.
      init: ``"k-means++"``, ``"random"`` or initial centres ``(k, d)``.
      n_init: initialisations (each on its own ``init_size`` rows); the lowest inertia on a
        common validation sample wins.
      init_size: rows per initialisation (default ``3 * batch_size``, at least ``3 * k``).
      sample_weight: non-negative weights ``(n,)``.
      tol: stop when the squared centre shift of a step is at most ``tol`` times the mean
        feature variance (0: off).
      max_no_improvement: stop after this many steps without a new low of the smoothed
        batch inertia (``None``: off).
      reassignment_ratio: re-seed centres holding under this fraction of the largest count.
      compute_labels: label every row at the end (streamed in chunks) and report the inertia.
      progress: show a progress bar.

    Returns:
      ``KMeansResult``; ``num_iters`` counts steps, ``labels`` and ``inertia`` are those of
      the final centres (empty and NaN without ``compute_labels``).
    """
    values = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(
            f"x must be a non-empty 2-D array (n_samples, n_features), got shape {values.shape}"
        )
    dtype = float_dtype()
    num_samples, num_features = values.shape
    num_clusters = check_num_clusters(num_clusters, num_samples)
    batch_size = min(check_positive_int("batch_size", batch_size), num_samples)
    max_iter = check_positive_int("max_iter", max_iter)
    n_init = check_positive_int("n_init", n_init)
    if max_no_improvement is not None:
        max_no_improvement = check_non_negative_int("max_no_improvement", max_no_improvement)
    reassignment_ratio = check_non_negative_float("reassignment_ratio", reassignment_ratio)
    tol = check_non_negative_float("tol", tol)
    key = check_key(key)
    weights = check_sample_weight(sample_weight, num_samples)
    _check_finite_in_chunks(values)
    full_batch = batch_size >= num_samples
    rng = _host_rng(key)
    init_key, step_key = jax.random.split(key)

    def rows(index):
        return jnp.asarray(values[index], dtype), jnp.asarray(weights[index], dtype)

    if full_batch:
        device_x, device_w = jnp.asarray(values, dtype), jnp.asarray(weights, dtype)
    mean = _column_mean(values, weights)
    tol = tol * float(np.mean(_column_variance(values, weights, mean)))

    if isinstance(init, str):
        check_choice("init", init, INITS)
        init_size = (
            3 * batch_size if init_size is None else check_positive_int("init_size", init_size)
        )
        init_size = min(num_samples, 3 * num_clusters if init_size < num_clusters else init_size)
        validation = None if init_size >= num_samples else rng.integers(0, num_samples, init_size)
        # With init_size covering the data, every initialisation sees all of it: sent once.
        everything = (
            None
            if validation is not None
            else (device_x, device_w)
            if full_batch
            else rows(slice(None))
        )
        best, best_inertia = None, np.inf
        for key_i in jax.random.split(init_key, n_init):
            sample_x, sample_w = everything or rows(rng.integers(0, num_samples, init_size))
            centres = _initial_centres(
                key_i,
                sample_x,
                sample_w,
                num_clusters=num_clusters,
                init=init,
                num_local_trials=local_trials(None, num_clusters),
            )
            check_x, check_w = (sample_x, sample_w) if validation is None else rows(validation)
            inertia = float(kmeans_predict(check_x, centres, sample_weight=check_w)[1])
            if inertia < best_inertia:
                best, best_inertia = centres, inertia
        centres = best
    else:
        centres = jnp.asarray(np.asarray(init), dtype)
        if centres.shape != (num_clusters, num_features):
            raise ValueError(
                "init must have shape (num_clusters, n_features) = "
                f"{(num_clusters, num_features)}, "
                f"got {centres.shape}"
            )

    state = init_state(centres)
    num_steps = max_iter * num_samples // batch_size
    tol = jnp.asarray(tol, dtype)
    step = functools.partial(
        minibatch_step,
        num_samples=num_samples,
        reassignment_ratio=reassignment_ratio,
        max_no_improvement=max_no_improvement,
    )
    previous = None
    with tqdm(total=num_steps, desc="mini-batch k-means", disable=not progress, leave=False) as bar:
        for i in range(num_steps):
            batch = (
                (device_x, device_w)
                if full_batch
                else rows(rng.integers(0, num_samples, batch_size))
            )
            state = step(state, jax.random.fold_in(step_key, i), *batch, tol)
            # Reading the previous step's flag lets this step run meanwhile; it is dropped on a
            # stop.
            if previous is not None and bool(previous.converged):
                state = previous
                break
            previous = state
            bar.update()
    num_iters = int(state.step)
    if compute_labels:
        labels, inertia = _label_in_chunks(values, weights, state.centres, dtype)
    else:
        labels, inertia = jnp.zeros(0, jnp.int32), jnp.full((), jnp.nan, dtype)
    return KMeansResult(state.centres, labels, inertia, jnp.asarray(num_iters, jnp.int32))


_HOST_CHUNK = 1 << 16


def _check_finite_in_chunks(values: np.ndarray) -> None:
    for start in range(0, values.shape[0], _HOST_CHUNK):
        block = np.asarray(values[start : start + _HOST_CHUNK])
        if block.dtype.kind not in "biuf":
            raise ValueError(f"x must be numeric, got dtype {block.dtype}")
        if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
            raise ValueError("x contains non-finite values (NaN or inf); clean the data first")


def _column_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted column mean, in float64 over host chunks."""
    total = np.zeros(values.shape[1])
    for start in range(0, values.shape[0], _HOST_CHUNK):
        total += weights[start : start + _HOST_CHUNK] @ np.asarray(
            values[start : start + _HOST_CHUNK], np.float64
        )
    return total / weights.sum()


def _column_variance(values: np.ndarray, weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Weighted column variance about ``mean``, in float64 over host chunks."""
    total = np.zeros(values.shape[1])
    for start in range(0, values.shape[0], _HOST_CHUNK):
        block = np.asarray(values[start : start + _HOST_CHUNK], np.float64) - mean
        total += weights[start : start + _HOST_CHUNK] @ (block * block)
    return total / weights.sum()


def _label_in_chunks(values, weights, centres, dtype):
    labels, inertia = [], 0.0
    for start in range(0, values.shape[0], _HOST_CHUNK):
        block_labels, block_inertia = kmeans_predict(
            jnp.asarray(values[start : start + _HOST_CHUNK], dtype),
            centres,
            sample_weight=weights[start : start + _HOST_CHUNK],
        )
        labels.append(block_labels)
        inertia += float(block_inertia)
    return jnp.concatenate(labels), jnp.asarray(inertia, dtype)
