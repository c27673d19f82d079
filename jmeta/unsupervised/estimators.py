"""``KMeans``, ``MiniBatchKMeans`` and ``PCA`` as scikit-learn estimators over jmeta's jitted
functions.

They take scikit-learn's constructor arguments where these apply, check their input with
``sklearn.utils.validation``, store fitted attributes as numpy arrays (so they pickle and
compare like scikit-learn's), and keep the input's precision: float64 data are fitted in
float64 (JAX's x64 mode for the duration of the call), anything else in float32.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from jmeta.unsupervised.kmeans import INITS, kmeans, kmeans_predict
from jmeta.unsupervised.minibatch import minibatch_kmeans
from jmeta.unsupervised.pca import (
    SOLVERS,
    PCAResult,
    choose_solver,
    pca,
    pca_inverse_transform,
    pca_transform,
)
from jmeta.validation import check_choice, check_positive_int

_DTYPES = [np.float64, np.float32]


def _precision(dtype):
    """A context with JAX's x64 mode on for float64 data, off otherwise."""
    return jax.enable_x64(np.dtype(dtype) == np.float64)


def _seed(random_state) -> int:
    """An int seed for ``jax.random.key`` from scikit-learn's ``random_state``."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state) % (2**32)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _check_init(init, n_clusters, n_features, dtype):
    if isinstance(init, str):
        return check_choice("init", init, INITS)
    init = np.asarray(init, dtype=dtype)
    if init.shape != (n_clusters, n_features):
        raise ValueError(
            f"init must have shape (n_clusters, n_features) = {(n_clusters, n_features)}, "
            f"got {init.shape}"
        )
    if not np.all(np.isfinite(init)):
        raise ValueError("init contains NaN or inf; expected finite initial centres")
    return init


def _n_init(n_init, init, random_restarts: int) -> int:
    """scikit-learn's ``n_init="auto"``: one run for k-means++ or an array, else
    ``random_restarts`` (10 for KMeans, 3 for MiniBatchKMeans); an array init runs once."""
    if not isinstance(init, str):
        return 1
    if n_init == "auto":
        return 1 if init == "k-means++" else random_restarts
    return check_positive_int("n_init", n_init)


class _BaseKMeans(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """What both k-means estimators share: prediction, distances and the score."""

    def _validate(self, X, reset):
        return validate_data(self, X, dtype=_DTYPES, reset=reset, order="C")

    def _fit_inputs(self, X, sample_weight):
        """Checked ``X``, weights and ``init`` for ``fit``, with ``n_clusters`` at most the rows."""
        X = self._validate(X, reset=True)
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=X.dtype, ensure_non_negative=True
        )
        check_positive_int("n_clusters", self.n_clusters)
        if self.n_clusters > X.shape[0]:
            raise ValueError(
                f"n_clusters={self.n_clusters} is larger than the number of samples, {X.shape[0]}; "
                f"expected at most {X.shape[0]}"
            )
        return X, sample_weight, _check_init(self.init, self.n_clusters, X.shape[1], X.dtype)

    def _store(self, result, dtype):
        self.cluster_centers_ = np.asarray(result.centres, dtype)
        self.labels_ = np.asarray(result.labels, np.int32)
        self.inertia_ = float(result.inertia)
        self.n_iter_ = int(result.num_iters)
        self._n_features_out = self.cluster_centers_.shape[0]

    def predict(self, X):
        """Index of the nearest centre of each row of ``X``."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        with _precision(X.dtype):
            labels, _ = kmeans_predict(X, self.cluster_centers_.astype(X.dtype))
            return np.asarray(labels, np.int32)

    def fit_predict(self, X, y=None, sample_weight=None):
        """``fit(X)`` and the labels of its rows."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Euclidean distances of the rows of ``X`` to every centre: ``(n, k)``."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        centres = self.cluster_centers_.astype(X.dtype)
        # From differences, in row chunks: the |x|² - 2x·c + |c|² expansion loses the
        # digits of a distance near zero to cancellation.
        rows = max(1, (1 << 22) // max(centres.size, 1))
        return np.concatenate(
            [
                np.sqrt(((X[i : i + rows, None, :] - centres[None]) ** 2).sum(-1))
                for i in range(0, X.shape[0], rows)
            ]
        )

    def fit_transform(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """Minus the weighted inertia of ``X`` under the fitted centres (higher is better)."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        with _precision(X.dtype):
            _, inertia = kmeans_predict(
                X, self.cluster_centers_.astype(X.dtype), sample_weight=sample_weight
            )
            return -float(inertia)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class KMeans(_BaseKMeans):
    """k-means (Lloyd) on jmeta's jitted functions, with ``sklearn.cluster.KMeans``'s interface.

    Args:
      n_clusters: number of clusters.
      init: ``"k-means++"`` (greedy, as scikit-learn), ``"random"`` or an array ``(k, d)``.
      n_init: restarts, run as one ``vmap``; ``"auto"`` is 1 for k-means++ or an array, 10
        for random (scikit-learn's rule).
      max_iter, tol: as scikit-learn's (``tol`` relative to the mean feature variance).
      random_state: int, ``RandomState`` or ``None``; an int gives the same labels every time.
      chunk_size: rows per distance product (default about ``2**19 / k``).

    Attributes: ``cluster_centers_``, ``labels_``, ``inertia_``, ``n_iter_``, ``n_features_in_``.
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        random_state=None,
        chunk_size=None,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.chunk_size = chunk_size

    def fit(self, X, y=None, sample_weight=None):
        """Clusters the rows of ``X`` (optionally weighted)."""
        X, sample_weight, init = self._fit_inputs(X, sample_weight)
        with _precision(X.dtype):
            result = kmeans(
                _seed(self.random_state),
                X,
                self.n_clusters,
                init=init,
                n_init=_n_init(self.n_init, init, 10),
                sample_weight=sample_weight,
                max_iter=self.max_iter,
                tol=self.tol,
                chunk_size=self.chunk_size,
            )
            self._store(result, X.dtype)
        return self


class MiniBatchKMeans(_BaseKMeans):
    """Mini-batch k-means with ``sklearn.cluster.MiniBatchKMeans``'s interface; the data stay
    on the host and batches are streamed to the device (``jmeta.unsupervised.minibatch_kmeans``).

    Attributes: ``cluster_centers_``, ``labels_`` (with ``compute_labels``), ``inertia_``,
    ``n_iter_`` (passes over the data), ``n_steps_``, ``n_features_in_``.
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        max_iter=100,
        batch_size=1024,
        compute_labels=True,
        random_state=None,
        tol=0.0,
        max_no_improvement=10,
        init_size=None,
        n_init="auto",
        reassignment_ratio=0.01,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.compute_labels = compute_labels
        self.random_state = random_state
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.n_init = n_init
        self.reassignment_ratio = reassignment_ratio

    def fit(self, X, y=None, sample_weight=None):
        """Clusters the rows of ``X`` by mini-batches."""
        X, sample_weight, init = self._fit_inputs(X, sample_weight)
        n_init = _n_init(self.n_init, init, 3)
        with _precision(X.dtype):
            result = minibatch_kmeans(
                _seed(self.random_state),
                X,
                self.n_clusters,
                batch_size=self.batch_size,
                max_iter=self.max_iter,
                init=init,
                n_init=n_init,
                init_size=self.init_size,
                sample_weight=sample_weight,
                tol=self.tol,
                max_no_improvement=self.max_no_improvement,
                reassignment_ratio=self.reassignment_ratio,
                compute_labels=True,
            )
            self._store(result, X.dtype)
        batch = min(self.batch_size, X.shape[0])
        self.n_steps_ = self.n_iter_
        self.n_iter_ = int(np.ceil(self.n_steps_ * batch / X.shape[0]))
        if not self.compute_labels:
            del self.labels_
        return self


class PCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """PCA on jmeta's jitted functions, with ``sklearn.decomposition.PCA``'s interface.

    Args:
      n_components: int, a fraction in (0, 1) of the variance to keep (exact solvers), or
        ``None`` for ``min(n_samples, n_features)``.
      whiten: scale the projections to unit variance.
      svd_solver: ``"auto"`` (scikit-learn's rule), ``"covariance_eigh"``, ``"full"`` or
        ``"randomized"``.
      n_oversamples, iterated_power, random_state: the randomized solver's.

    Attributes: ``components_``, ``explained_variance_``, ``explained_variance_ratio_``,
    ``singular_values_``, ``mean_``, ``noise_variance_``, ``n_components_``, ``n_samples_``.
    """

    def __init__(
        self,
        n_components=None,
        *,
        whiten=False,
        svd_solver="auto",
        n_oversamples=10,
        iterated_power="auto",
        random_state=None,
    ):
        self.n_components = n_components
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.n_oversamples = n_oversamples
        self.iterated_power = iterated_power
        self.random_state = random_state

    def _components_to_fit(self, n_samples, n_features):
        """(number to compute, number to keep or None to choose by variance, solver)."""
        limit = min(n_samples, n_features)
        n = self.n_components
        fraction = isinstance(n, numbers.Real) and not isinstance(n, numbers.Integral) and 0 < n < 1
        if n is None:
            n = limit
        elif not fraction:
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= limit:
                raise ValueError(
                    f"n_components={self.n_components!r} must be an integer between 1 and "
                    f"min(n_samples, n_features)={limit}, a fraction in (0, 1), or None"
                )
        solver = check_choice("svd_solver", self.svd_solver, SOLVERS)
        if solver == "auto":
            solver = choose_solver(n_samples, n_features, limit if fraction else n)
        if fraction and solver == "randomized":
            raise ValueError(
                f"n_components={n!r} (a fraction of the variance) needs an exact solver, "
                "not svd_solver='randomized'"
            )
        return (limit, n, solver) if fraction else (n, None, solver)

    def fit(self, X, y=None):
        """Fits the components of ``X``."""
        self._fit(X)
        return self

    def _fit(self, X):
        X = validate_data(self, X, dtype=_DTYPES, reset=True)
        n_samples, n_features = X.shape
        if n_samples < 2:
            raise ValueError(
                f"PCA needs at least 2 samples for a variance, got n_samples = {n_samples}"
            )
        computed, fraction, solver = self._components_to_fit(n_samples, n_features)
        with _precision(X.dtype):
            result = pca(
                X,
                computed,
                solver=solver,
                key=_seed(self.random_state),
                n_oversamples=self.n_oversamples,
                n_power_iters=self.iterated_power,
            )
        result = PCAResult(*(np.asarray(leaf, X.dtype) for leaf in result))
        if fraction is not None:
            kept = int(
                np.searchsorted(np.cumsum(result.explained_variance_ratio), fraction, side="right")
                + 1
            )
            kept = min(kept, computed)
            noise = result.explained_variance[kept:].mean() if kept < computed else 0.0
            result = PCAResult(
                result.mean,
                result.components[:kept],
                result.explained_variance[:kept],
                result.explained_variance_ratio[:kept],
                result.singular_values[:kept],
                np.asarray(noise, X.dtype),
            )
        self.mean_ = result.mean
        self.components_ = result.components
        self.explained_variance_ = result.explained_variance
        self.explained_variance_ratio_ = result.explained_variance_ratio
        self.singular_values_ = result.singular_values
        self.noise_variance_ = float(result.noise_variance)
        self.n_components_ = self.components_.shape[0]
        self.n_samples_ = n_samples
        self._fit_svd_solver = solver
        self._n_features_out = self.n_components_
        return X

    def _result(self, dtype) -> PCAResult:
        return PCAResult(
            *(
                np.asarray(a, dtype)
                for a in (
                    self.mean_,
                    self.components_,
                    self.explained_variance_,
                    self.explained_variance_ratio_,
                    self.singular_values_,
                    self.noise_variance_,
                )
            )
        )

    def transform(self, X):
        """Projections of ``X`` on the components: ``(n, n_components_)``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_DTYPES, reset=False)
        with _precision(X.dtype):
            return np.asarray(pca_transform(self._result(X.dtype), X, self.whiten), X.dtype)

    def fit_transform(self, X, y=None):
        X = self._fit(X)
        with _precision(X.dtype):
            return np.asarray(pca_transform(self._result(X.dtype), X, self.whiten), X.dtype)

    def inverse_transform(self, X):
        """Maps projections back to the data space."""
        check_is_fitted(self)
        X = check_array(X, dtype=_DTYPES)
        if X.ndim != 2 or X.shape[1] != self.n_components_:
            raise ValueError(f"X must have shape (n_samples, {self.n_components_}), got {X.shape}")
        with _precision(X.dtype):
            return np.asarray(pca_inverse_transform(self._result(X.dtype), X, self.whiten), X.dtype)

    def get_covariance(self):
        """The data covariance of the probabilistic PCA model: ``(d, d)``."""
        check_is_fitted(self)
        components = self.components_
        variance = self.explained_variance_
        if self.whiten:
            components = components * np.sqrt(variance[:, None])
        difference = np.maximum(variance - self.noise_variance_, 0.0)
        covariance = (components.T * difference) @ components
        covariance.flat[:: covariance.shape[0] + 1] += self.noise_variance_
        return covariance

    def get_precision(self):
        """The inverse of ``get_covariance()``."""
        return np.linalg.pinv(self.get_covariance().astype(np.float64))

    def score_samples(self, X):
        """Log-likelihood of each row under the probabilistic PCA model (Tipping and Bishop
        1999)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_DTYPES, reset=False)
        centred = X.astype(np.float64) - self.mean_
        precision = self.get_precision()
        sign, logdet = np.linalg.slogdet(precision)
        logdet = logdet if sign > 0 else -np.inf
        n_features = X.shape[1]
        return -0.5 * (centred * (centred @ precision)).sum(axis=1) - 0.5 * (
            n_features * np.log(2 * np.pi) - logdet
        )

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of ``X``."""
        return float(np.mean(self.score_samples(X)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
