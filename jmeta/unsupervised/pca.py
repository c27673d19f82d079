"""Principal component analysis as pure jitted functions: exact (covariance eigendecomposition
or SVD of the centred data) and randomized (Halko, Martinsson and Tropp 2011).

Results follow ``sklearn.decomposition.PCA`` attribute for attribute, including its sign
convention (each component's largest-magnitude entry is positive), so components agree
with scikit-learn's up to float rounding, not up to sign.

No solver makes a centred copy of the data: ``covariance_eigh`` subtracts ``n·μμᵀ`` from
the Gram matrix (as scikit-learn does), and the randomized range finder applies the
centring as a rank-one correction to each product with ``X``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jmeta.sharding import check_mesh, pad_rows, sum_over
from jmeta.unsupervised.validation import check_data, check_key
from jmeta.validation import check_choice, check_non_negative_int, check_positive_int

SOLVERS = ("auto", "covariance_eigh", "full", "randomized")


class PCAResult(NamedTuple):
    """A fitted PCA, with scikit-learn's attribute names (without the trailing ``_``)."""

    mean: jax.Array  # (d,)
    components: jax.Array  # (k, d), rows of unit norm
    explained_variance: jax.Array  # (k,)
    explained_variance_ratio: jax.Array  # (k,)
    singular_values: jax.Array  # (k,)
    noise_variance: jax.Array  # (): mean variance of the discarded directions


def choose_solver(num_samples: int, num_features: int, num_components: int) -> str:
    """scikit-learn's ``svd_solver="auto"`` rule: the covariance for tall data, the SVD for
    small data, randomized when few components are asked of large data."""
    if num_features <= 1000 and num_samples >= 10 * num_features:
        return "covariance_eigh"
    if max(num_samples, num_features) <= 500:
        return "full"
    if 1 <= num_components < 0.8 * min(num_samples, num_features):
        return "randomized"
    return "full"


def _flip_signs(components: jax.Array) -> jax.Array:
    """Makes the largest-magnitude entry of each row positive
    (``svd_flip(u_based_decision=False)``)."""
    largest = jnp.take_along_axis(
        components, jnp.argmax(jnp.abs(components), axis=1)[:, None], axis=1
    )
    return components * jnp.where(largest < 0, -1, 1).astype(components.dtype)


def _truncate(
    mean,
    components,
    explained_variance,
    singular_values,
    total_variance,
    num_components,
    noise_variance=None,
) -> PCAResult:
    """Keeps the leading ``num_components``; the noise variance is the mean of the rest
    unless given (the randomized solver, which never sees the rest)."""
    if noise_variance is None:
        rest = explained_variance[num_components:]
        noise_variance = jnp.mean(rest) if rest.shape[0] else jnp.zeros((), mean.dtype)
    return PCAResult(
        mean,
        components[:num_components],
        explained_variance[:num_components],
        explained_variance[:num_components] / total_variance,
        singular_values[:num_components],
        noise_variance,
    )


def _moments(x: jax.Array, mesh) -> tuple[jax.Array, jax.Array]:
    """``Xᵀ X`` and the column sums of ``x``; on a mesh, each device's rows' partial sums
    added by one ``psum`` of one flat vector (zero rows of padding add nothing)."""

    def local(x):
        return x.T @ x, jnp.sum(x, axis=0)

    if mesh is None:
        return local(x)
    axis = mesh.axis_names[0]
    return jax.shard_map(
        lambda x: sum_over(local(x), axis),
        mesh=mesh,
        in_specs=PartitionSpec(axis),
        out_specs=PartitionSpec(),
    )(x)


def _covariance_eigh(
    x: jax.Array, num_components: int, num_samples: int | None = None, mesh=None
) -> PCAResult:
    num_samples = x.shape[0] if num_samples is None else num_samples
    gram, column_sums = _moments(x, mesh)
    mean = column_sums / num_samples
    covariance = (gram - num_samples * jnp.outer(mean, mean)) / (num_samples - 1)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    # eigh sorts ascending and can return tiny negative values for a PSD matrix.
    explained_variance = jnp.maximum(eigenvalues[::-1], 0)
    components = _flip_signs(eigenvectors[:, ::-1].T)
    singular_values = jnp.sqrt(explained_variance * (num_samples - 1))
    return _truncate(
        mean,
        components,
        explained_variance,
        singular_values,
        jnp.sum(explained_variance),
        num_components,
    )


def _full_svd(x: jax.Array, num_components: int) -> PCAResult:
    num_samples = x.shape[0]
    mean = jnp.mean(x, axis=0)
    _, singular_values, vt = jnp.linalg.svd(x - mean[None, :], full_matrices=False)
    explained_variance = singular_values**2 / (num_samples - 1)
    return _truncate(
        mean,
        _flip_signs(vt),
        explained_variance,
        singular_values,
        jnp.sum(explained_variance),
        num_components,
    )


def _randomized(
    key: jax.Array, x: jax.Array, num_components: int, n_oversamples: int, n_power_iters: int
) -> PCAResult:
    """Halko et al.'s randomized SVD of the centred data, QR-normalised power iterations."""
    num_samples, num_features = x.shape
    mean = jnp.mean(x, axis=0)
    ones = jnp.ones(num_samples, x.dtype)

    def times(q):  # (X - 1μᵀ) q
        return x @ q - jnp.outer(ones, mean @ q)

    def times_transposed(p):  # (X - 1μᵀ)ᵀ p
        return x.T @ p - jnp.outer(mean, ones @ p)

    def orthonormal(a):
        return jnp.linalg.qr(a, mode="reduced")[0]

    size = min(num_components + n_oversamples, num_samples, num_features)
    q = jax.random.normal(key, (num_features, size), x.dtype)
    q = orthonormal(times(q))
    for _ in range(n_power_iters):
        q = orthonormal(times(orthonormal(times_transposed(q))))
    b = times_transposed(q).T  # qᵀ(X - 1μᵀ): (size, d)
    _, singular_values, vt = jnp.linalg.svd(b, full_matrices=False)
    explained_variance = singular_values**2 / (num_samples - 1)
    total_variance = jnp.sum((x - mean[None, :]) ** 2) / (num_samples - 1)
    kept = explained_variance[:num_components]
    rest = min(num_samples, num_features) - num_components
    noise_variance = (total_variance - jnp.sum(kept)) / rest if rest else jnp.zeros((), x.dtype)
    return _truncate(
        mean,
        _flip_signs(vt),
        explained_variance,
        singular_values,
        total_variance,
        num_components,
        noise_variance,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_components",
        "solver",
        "n_oversamples",
        "n_power_iters",
        "num_samples",
        "mesh",
    ),
)
def _pca(key, x, *, num_components, solver, n_oversamples, n_power_iters, num_samples, mesh):
    if solver == "covariance_eigh":
        return _covariance_eigh(x, num_components, num_samples, mesh)
    if solver == "full":
        return _full_svd(x, num_components)
    return _randomized(key, x, num_components, n_oversamples, n_power_iters)


def pca(
    x: Any,
    num_components: int | None = None,
    *,
    solver: str = "auto",
    key: Any = 0,
    n_oversamples: int = 10,
    n_power_iters: int | str = "auto",
    mesh: jax.sharding.Mesh | None = None,
) -> PCAResult:
    """Principal components of the rows of ``x``, in one jitted call (one compile per shape).

    Args:
      x: data ``(n, d)``, at least two rows; float32 (float64 with JAX's x64 enabled).
      num_components: ``k``, at most ``min(n, d)`` (default: all of them).
      solver: ``"covariance_eigh"`` (eigendecomposition of the ``d × d`` covariance: for
        ``n ≫ d``), ``"full"`` (SVD of the centred data), ``"randomized"`` or ``"auto"``
        (scikit-learn's rule, ``choose_solver``).
      key: PRNG key or int seed of the randomized solver's test matrix.
      n_oversamples: extra random directions of the randomized solver.
      n_power_iters: its power iterations; ``"auto"`` is scikit-learn's (7 when
        ``k < 0.1 · min(n, d)``, else 4).
      mesh: a one-axis ``jax.sharding.Mesh`` (``jmeta.task_mesh(n)``) to split the rows
        over: each device forms its rows' ``Xᵀ X`` and column sums, one all-reduce adds
        them, and the ``d × d`` eigendecomposition follows on every device. Only the
        covariance solver splits this way, so ``solver`` must be ``"auto"`` or
        ``"covariance_eigh"``.

    Returns:
      ``PCAResult`` (``mean``, ``components``, ``explained_variance``,
      ``explained_variance_ratio``, ``singular_values``, ``noise_variance``).

    Example::

      result = pca(x, 50)
      z = pca_transform(result, x)              # (n, 50)
    """
    x = check_data("x", x)
    num_samples, num_features = x.shape
    if num_samples < 2:
        raise ValueError(f"x must have at least 2 samples for a variance, got shape {x.shape}")
    limit = min(num_samples, num_features)
    num_components = (
        limit if num_components is None else check_positive_int("num_components", num_components)
    )
    if num_components > limit:
        raise ValueError(
            f"num_components={num_components} is larger than min(n_samples, n_features) = {limit}; "
            f"expected at most {limit}"
        )
    check_choice("solver", solver, SOLVERS)
    if mesh is not None:
        check_mesh(mesh)
        if solver not in ("auto", "covariance_eigh"):
            raise ValueError(
                f"solver={solver!r} cannot split its rows over a mesh; with mesh= use "
                "solver='covariance_eigh' (or 'auto')"
            )
        solver = "covariance_eigh"
        x = pad_rows(x, mesh)
    if solver == "auto":
        solver = choose_solver(num_samples, num_features, num_components)
    n_oversamples = check_non_negative_int("n_oversamples", n_oversamples)
    if n_power_iters == "auto":
        n_power_iters = 7 if num_components < 0.1 * limit else 4
    n_power_iters = check_non_negative_int("n_power_iters", n_power_iters)
    return _pca(
        check_key(key),
        x,
        num_components=num_components,
        solver=solver,
        n_oversamples=n_oversamples,
        n_power_iters=n_power_iters,
        num_samples=num_samples,
        mesh=mesh,
    )


def _whitening_scale(result: PCAResult) -> jax.Array:
    scale = jnp.sqrt(result.explained_variance)
    return jnp.maximum(scale, jnp.finfo(scale.dtype).eps)


@functools.partial(jax.jit, static_argnames=("whiten",))
def pca_transform(result: PCAResult, x: jax.Array, whiten: bool = False) -> jax.Array:
    """Projects ``x`` ``(n, d)`` on the components: ``(n, k)``; with ``whiten``, unit variance."""
    z = (x - result.mean[None, :]) @ result.components.T
    return z / _whitening_scale(result)[None, :] if whiten else z


@functools.partial(jax.jit, static_argnames=("whiten",))
def pca_inverse_transform(result: PCAResult, z: jax.Array, whiten: bool = False) -> jax.Array:
    """Maps projections ``z`` ``(n, k)`` back to the data space ``(n, d)``."""
    if whiten:
        z = z * _whitening_scale(result)[None, :]
    return z @ result.components + result.mean[None, :]
