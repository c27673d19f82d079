"""PCA and k-means against scikit-learn, their properties, and their errors."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.cluster
import sklearn.decomposition
from sklearn.datasets import load_digits, make_blobs

from jmeta.unsupervised import (
    PCA,
    KMeans,
    MiniBatchKMeans,
    kmeans,
    kmeans_plusplus,
    kmeans_predict,
    minibatch_kmeans,
    pca,
    pca_inverse_transform,
    pca_transform,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits().data.astype(np.float64)


@pytest.fixture(scope="module")
def blobs():
    x, _ = make_blobs(600, centers=6, n_features=5, random_state=3)
    return x


def _initial_rows(x, k, seed=0):
    return x[np.random.default_rng(seed).choice(len(x), k, replace=False)]


@pytest.mark.parametrize("max_iter", [1, 4, 300])
@pytest.mark.parametrize("data", ["digits", "blobs"])
def test_lloyd_equals_scikit_learn_from_the_same_centres(x64, data, max_iter, request):
    x = request.getfixturevalue(data)
    init = _initial_rows(x, 10)
    reference = sklearn.cluster.KMeans(
        10, init=init, n_init=1, max_iter=max_iter, algorithm="lloyd"
    ).fit(x)
    result = kmeans(0, x, 10, init=init, max_iter=max_iter)
    np.testing.assert_array_equal(np.asarray(result.labels), reference.labels_)
    np.testing.assert_allclose(float(result.inertia), reference.inertia_, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(result.centres), reference.cluster_centers_, rtol=1e-7, atol=1e-9
    )
    assert int(result.num_iters) == reference.n_iter_


def test_lloyd_in_float32_matches_scikit_learn_on_blobs(blobs):
    x = blobs.astype(np.float32)
    init = _initial_rows(x, 6)
    reference = sklearn.cluster.KMeans(6, init=init, n_init=1, algorithm="lloyd").fit(x)
    result = kmeans(0, x, 6, init=init)
    assert result.centres.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(result.labels), reference.labels_)
    np.testing.assert_allclose(float(result.inertia), reference.inertia_, rtol=1e-5)


def test_kmeans_plusplus_is_as_good_as_scikit_learns_on_average(x64, digits):
    ours = [float(kmeans(seed, digits, 10).inertia) for seed in range(8)]
    theirs = [
        sklearn.cluster.KMeans(10, n_init=1, random_state=seed).fit(digits).inertia_
        for seed in range(8)
    ]
    assert np.mean(ours) <= 1.01 * np.mean(theirs)
    # The seeding alone: greedy k-means++ beats uniformly random rows by a wide margin.
    seeded = kmeans_predict(digits, kmeans_plusplus(0, digits, 10)[0])[1]
    random_rows = kmeans_predict(digits, _initial_rows(digits, 10))[1]
    assert float(seeded) < float(random_rows)


def test_restarts_never_raise_inertia(digits):
    # Restart i draws from fold_in(key, i): n_init=m runs the first m restarts of n_init=m+1.
    inertias = [
        float(kmeans(jax.random.key(5), digits, 10, n_init=m).inertia) for m in (1, 2, 4, 8)
    ]
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(inertias, inertias[1:])), (
        inertias
    )
    assert inertias[-1] < inertias[0]


def test_same_key_same_labels_bit_for_bit(digits):
    first = kmeans(jax.random.key(3), digits, 10, n_init=3)
    second = kmeans(jax.random.key(3), digits, 10, n_init=3)
    np.testing.assert_array_equal(np.asarray(first.labels), np.asarray(second.labels))
    np.testing.assert_array_equal(np.asarray(first.centres), np.asarray(second.centres))


def test_row_order_does_not_change_the_clustering(x64, digits):
    permutation = np.random.default_rng(1).permutation(len(digits))
    first = kmeans(2, digits, 10)
    second = kmeans(2, digits[permutation], 10)
    np.testing.assert_allclose(float(first.inertia), float(second.inertia), rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(first.labels)[permutation], np.asarray(second.labels))


def test_weights_are_repeated_rows(x64, blobs):
    counts = np.random.default_rng(0).integers(0, 4, len(blobs))
    weighted = kmeans(4, blobs, 6, sample_weight=counts.astype(float))
    repeated = kmeans(4, np.repeat(blobs, counts, axis=0), 6)
    np.testing.assert_allclose(
        np.asarray(weighted.centres), np.asarray(repeated.centres), rtol=1e-9
    )
    np.testing.assert_allclose(float(weighted.inertia), float(repeated.inertia), rtol=1e-9)


def test_an_empty_cluster_is_reseeded_at_the_farthest_point():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0], [50.0, 0.0]], np.float32)
    # Two centres start on top of each other: one of them gets no point in the first step.
    init = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]], np.float32)
    result = kmeans(0, x, 3, init=init, max_iter=1)
    centres = np.asarray(result.centres)
    assert np.isfinite(centres).all()
    assert any(np.allclose(c, [50.0, 0.0]) for c in centres), centres
    assert len(set(np.asarray(result.labels).tolist())) == 3


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_duplicates_and_as_many_clusters_as_points_stay_finite(init):
    x = np.repeat(np.arange(10.0, dtype=np.float32).reshape(5, 2), 4, axis=0)
    for k in (5, 20):
        result = kmeans(0, x, k, init=init, n_init=2)
        chex.assert_tree_all_finite(result)
        assert float(result.inertia) < 1e-6


def test_one_compilation_per_shape(blobs):
    from jmeta.benchmark import counting_compiles

    x = blobs.astype(np.float32)
    kmeans(0, x, 4)
    with counting_compiles() as compiles:
        kmeans(1, x * 2, 4, max_iter=7, tol=1e-3)  # new key, values, max_iter and tol
    assert compiles["traces"] == 0 and compiles["compiles"] == 0
    with counting_compiles() as compiles:
        kmeans(1, x[:-1], 4)
    assert compiles["compiles"] >= 1  # a new shape compiles the k-means program again


def test_minibatch_kmeans_is_close_to_scikit_learns(blobs):
    x = blobs.astype(np.float32)
    ours = minibatch_kmeans(0, x, 6, batch_size=64, max_iter=20)
    theirs = sklearn.cluster.MiniBatchKMeans(6, batch_size=64, max_iter=20, random_state=0).fit(x)
    full = sklearn.cluster.KMeans(6, random_state=0).fit(x)
    assert float(ours.inertia) <= 1.05 * full.inertia_
    assert float(ours.inertia) <= 1.05 * theirs.inertia_
    assert np.asarray(ours.labels).shape == (len(x),)


def test_minibatch_streams_a_memory_mapped_array(tmp_path, blobs):
    path = tmp_path / "x.npy"
    np.save(path, blobs.astype(np.float32))
    mapped = np.load(path, mmap_mode="r")
    first = minibatch_kmeans(7, mapped, 6, batch_size=50, max_iter=3)
    second = minibatch_kmeans(7, np.asarray(mapped), 6, batch_size=50, max_iter=3)
    np.testing.assert_array_equal(np.asarray(first.centres), np.asarray(second.centres))
    assert float(first.inertia) > 0


@pytest.mark.parametrize("solver", ["covariance_eigh", "full"])
def test_exact_pca_equals_scikit_learn(x64, digits, solver):
    reference = sklearn.decomposition.PCA(20, svd_solver=solver).fit(digits)
    result = pca(digits, 20, solver=solver)
    np.testing.assert_allclose(np.asarray(result.components), reference.components_, atol=1e-10)
    for ours, theirs in [
        (result.explained_variance, reference.explained_variance_),
        (result.explained_variance_ratio, reference.explained_variance_ratio_),
        (result.singular_values, reference.singular_values_),
        (result.mean, reference.mean_),
        (result.noise_variance, reference.noise_variance_),
    ]:
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(pca_transform(result, digits)), reference.transform(digits), atol=1e-9
    )
    whitened = sklearn.decomposition.PCA(20, svd_solver=solver, whiten=True).fit(digits)
    np.testing.assert_allclose(
        np.asarray(pca_transform(result, digits, whiten=True)),
        whitened.transform(digits),
        atol=1e-9,
    )
    z = whitened.transform(digits)
    np.testing.assert_allclose(
        np.asarray(pca_inverse_transform(result, z, whiten=True)),
        whitened.inverse_transform(z),
        atol=1e-9,
    )


def test_randomized_pca_agrees_with_scikit_learns_randomized_and_exact(x64):
    rng = np.random.default_rng(0)
    # A decaying spectrum, as real data have, so the leading directions are well separated.
    x = rng.standard_normal((2000, 300)) * (0.8 ** np.arange(300))
    ours = pca(x, 10, solver="randomized", key=1)
    theirs = sklearn.decomposition.PCA(10, svd_solver="randomized", random_state=0).fit(x)
    exact = sklearn.decomposition.PCA(10, svd_solver="full").fit(x)
    np.testing.assert_allclose(
        np.asarray(ours.explained_variance), theirs.explained_variance_, rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(ours.explained_variance), exact.explained_variance_, rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(ours.components), exact.components_, atol=1e-4)
    np.testing.assert_allclose(float(ours.noise_variance), theirs.noise_variance_, rtol=1e-6)


def test_pca_is_float32_by_default_and_float64_with_x64(digits):
    assert pca(digits, 3).components.dtype == jnp.float32
    with jax.enable_x64(True):
        assert pca(digits, 3).components.dtype == jnp.float64


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda x: kmeans(0, x, 101),
            r"num_clusters=101 is larger than the number of samples, 100",
        ),
        (lambda x: kmeans(0, x, 0), r"num_clusters must be a positive integer, got 0"),
        (
            lambda x: kmeans(0, np.where(np.arange(300).reshape(100, 3) == 7, np.nan, x), 3),
            r"x contains 1 non-finite",
        ),
        (lambda x: kmeans(0, x[:, 0], 3), r"x must be a 2-D array .* got shape \(100,\)"),
        (lambda x: kmeans(0, x[:0], 3), r"at least one sample .* got shape \(0, 3\)"),
        (
            lambda x: kmeans(0, x, 3, sample_weight=-np.ones(100)),
            r"sample_weight must be non-negative",
        ),
        (
            lambda x: kmeans(0, x, 3, sample_weight=np.ones(99)),
            r"sample_weight must have shape \(100,\)",
        ),
        (
            lambda x: kmeans(0, x, 3, init=np.zeros((3, 2))),
            r"init must have shape .* \(3, 3\), got \(3, 2\)",
        ),
        (lambda x: kmeans(0, x, 3, init="kmeans"), r"unknown init 'kmeans'"),
        (lambda x: kmeans(0, x, 3, tol=-1), r"tol must be a non-negative"),
        (lambda x: kmeans("seed", x, 3), r"key must be a JAX PRNG key"),
        (lambda x: pca(x, 4), r"num_components=4 is larger than min\(n_samples, n_features\) = 3"),
        (lambda x: pca(x, 2, solver="arpack"), r"unknown solver 'arpack'"),
        (lambda x: pca(x[:1], 1), r"at least 2 samples"),
        (lambda x: pca(np.full((100, 3), np.inf), 1), r"x contains 300 non-finite"),
        (lambda x: minibatch_kmeans(0, x, 101), r"num_clusters=101 is larger"),
        (
            lambda x: minibatch_kmeans(0, x, 3, reassignment_ratio="often"),
            r"reassignment_ratio must be a non-negative",
        ),
        (
            lambda x: minibatch_kmeans(0, x, 3, sample_weight=np.zeros(100)),
            r"sample_weight must have at least one",
        ),
        (
            lambda x: KMeans(n_clusters=200).fit(x),
            r"n_clusters=200 is larger than the number of samples, 100",
        ),
        (
            lambda x: PCA(n_components=5).fit(x),
            r"n_components=5 must be an integer between 1 and .*=3",
        ),
        (
            lambda x: KMeans(3, init=np.zeros((2, 3))).fit(x),
            r"init must have shape .*\(3, 3\), got \(2, 3\)",
        ),
    ],
)
def test_bad_input_names_the_parameter_before_compiling(call, match):
    x = np.random.default_rng(0).standard_normal((100, 3))
    with pytest.raises(ValueError, match=match):
        call(x)


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator",
    [KMeans(), KMeans(n_clusters=2, n_init=2, max_iter=5), MiniBatchKMeans(), PCA()],
    ids=["KMeans", "KMeans-restarts", "MiniBatchKMeans", "PCA"],
)
def test_scikit_learn_estimator_checks(estimator):
    from sklearn.utils.estimator_checks import check_estimator

    # No check is exempted; the array-API check skips itself unless SCIPY_ARRAY_API is set.
    results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert len(results) > 40


def test_estimators_agree_with_scikit_learns_and_work_in_pipelines(digits):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    init = _initial_rows(digits, 10)
    ours = KMeans(10, init=init).fit(digits)
    theirs = sklearn.cluster.KMeans(10, init=init, n_init=1).fit(digits)
    assert ours.cluster_centers_.dtype == np.float64
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.inertia_, theirs.inertia_, rtol=1e-5)
    np.testing.assert_array_equal(ours.predict(digits[:50]), theirs.predict(digits[:50]))
    np.testing.assert_allclose(ours.transform(digits[:5]), theirs.transform(digits[:5]), rtol=1e-6)
    projection = PCA(0.9).fit(digits)
    reference = sklearn.decomposition.PCA(0.9).fit(digits)
    assert projection.n_components_ == reference.n_components_
    np.testing.assert_allclose(projection.score(digits), reference.score(digits), rtol=1e-8)

    pipeline = make_pipeline(
        StandardScaler(), PCA(n_components=10), KMeans(n_clusters=10, random_state=0)
    )
    labels = pipeline.fit_predict(digits)
    assert labels.shape == (len(digits),) and len(np.unique(labels)) == 10
    search = GridSearchCV(
        make_pipeline(PCA(), KMeans(random_state=0)),
        {"pca__n_components": [5, 20], "kmeans__n_clusters": [5, 10]},
        cv=2,
    )
    search.fit(digits)
    assert search.best_params_["kmeans__n_clusters"] == 10


def test_importing_jmeta_does_not_import_the_unsupervised_package():
    code = "import sys, jmeta; print('jmeta.unsupervised' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
