"""The unsupervised meta-learner: pseudo-labelled tasks, self-training, the estimator, the
experiment."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from jmeta.data.omniglot import load_omniglot_arrays
from jmeta.runs import RunDir
from jmeta.tasks import Batch, Task, sample_tasks
from jmeta.unsupervised import (
    UnsupervisedMetaLearner,
    cactus_partitions,
    cluster_members,
    confident_labels,
    expected_calibration_error,
    make_partitions,
    make_pseudo_task_sampler,
    self_train_partition,
)
from jmeta.unsupervised import meta_learner as meta_learner_module


def _two_partitions(num_points=120):
    """Partition 0 groups points by ``i % 10``, partition 1 by ``i // 12``: a task that mixed
    them could not have every class inside one cluster of a single partition."""
    index = np.arange(num_points)
    return make_partitions(np.stack([index % 10, index // 12]), 10, 6)


def _task_points(sample, key, ways, shots, queries):
    task = sample(key)
    support = np.asarray(task.support.x).reshape(ways, shots)
    query = np.asarray(task.query.x).reshape(ways, queries)
    return np.concatenate([support, query], axis=1), np.asarray(task.support.y).reshape(ways, shots)


def test_cluster_members_lists_each_cluster_once_padded():
    labels = jnp.array([2, 0, -1, 2, 2, 1, 0], jnp.int32)
    members, counts = cluster_members(labels, 4, 4)
    np.testing.assert_array_equal(counts, [2, 1, 3, 0])
    for cluster in range(4):
        listed = np.asarray(members[cluster, : counts[cluster]])
        np.testing.assert_array_equal(
            np.sort(listed), np.flatnonzero(np.asarray(labels) == cluster)
        )


def test_tasks_use_one_partition_distinct_clusters_and_distinct_points():
    partitions = _two_partitions()
    labels = np.asarray(partitions.labels)
    ways, shots, queries = 4, 2, 3
    sample = make_pseudo_task_sampler(jnp.arange(120)[:, None], partitions, ways, shots, queries)
    seen_partitions = set()
    for seed in range(60):
        points, support_y = _task_points(sample, jax.random.key(seed), ways, shots, queries)
        points = points[..., 0] if points.ndim == 3 else points
        assert len(np.unique(points)) == ways * (shots + queries)
        homes = [
            p
            for p in range(2)
            if all(len(np.unique(labels[p, row])) == 1 for row in points)
            and len(np.unique(labels[p, points[:, 0]])) == ways
        ]
        assert homes, f"task {seed} mixes partitions or repeats a cluster"
        seen_partitions.update(homes)
        assert sorted(support_y[:, 0]) == list(range(ways))
    assert seen_partitions == {0, 1}


def test_clusters_smaller_than_shots_plus_queries_are_never_drawn():
    labels = np.repeat(np.arange(8), [20, 20, 3, 20, 4, 20, 20, 2])
    partitions = make_partitions(labels[None, :], 8, 6)
    sample = make_pseudo_task_sampler(jnp.arange(len(labels))[:, None], partitions, 5, 1, 5)
    drawn = np.concatenate(
        [np.asarray(sample(jax.random.key(seed)).query.x).ravel() for seed in range(50)]
    )
    assert set(np.unique(labels[drawn])) == {0, 1, 3, 5, 6}


def test_sampler_is_jittable_vmappable_and_deterministic_per_key():
    sample = make_pseudo_task_sampler(jnp.arange(120.0)[:, None], _two_partitions(), 3, 1, 2)
    key = jax.random.key(7)
    chex.assert_trees_all_equal(sample(key), jax.jit(sample)(key), sample(key))
    batch = jax.jit(lambda k: sample_tasks(sample, k, 5))(key)
    chex.assert_shape(batch.support.x, (5, 3, 1))
    keys = jax.random.split(key, 5)
    chex.assert_trees_all_equal(
        jax.vmap(sample)(keys),
        jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[sample(k) for k in keys]),
    )
    assert not np.array_equal(sample(key).query.x, sample(jax.random.key(8)).query.x)


def test_rescaling_is_drawn_per_partition_and_per_dimension():
    x, _ = make_blobs(400, centers=8, n_features=6, random_state=0)
    partitions, factors = cactus_partitions(0, x.astype(np.float32), 8, 4, 6, 5)
    factors = np.asarray(factors)
    np.testing.assert_array_equal(factors[0], np.ones(6))
    assert np.all((factors[1:] >= 0) & (factors[1:] <= 1))
    assert len({tuple(row) for row in factors[1:]}) == 3  # a new draw per partition
    assert all(len(np.unique(row)) == 6 for row in factors[1:])  # and per dimension
    assert np.asarray(partitions.usable).sum(axis=1).min() >= 5


def test_partitions_are_redrawn_or_refused_when_too_few_clusters_are_usable():
    x = np.concatenate([np.zeros((30, 2)), np.ones((3, 2)) * 5]).astype(np.float32)
    with pytest.raises(ValueError, match="only 1 of num_clusters = 2 clusters .* ways = 2"):
        cactus_partitions(0, x, 2, 2, 6, 2, max_redraws=2)


def test_learned_temperature_lowers_the_calibration_error_on_overlapping_blobs():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 2000)
    x = (rng.normal(size=(2000, 2)) * 3 + np.stack([truth * 4.0, np.zeros(2000)], 1)).astype(
        np.float32
    )
    result = self_train_partition(jax.random.key(0), x, 2, 2, 5, 5, 0.0)
    temperature = float(np.exp(result.log_temperature))
    assert np.isfinite(temperature) and temperature > 0
    kmeans_labels = np.asarray(result.kmeans_labels)
    truth = truth if np.mean(kmeans_labels == truth) >= 0.5 else 1 - truth
    correct = np.asarray(result.labels) == truth
    _, unit_confidence = confident_labels(jnp.asarray(x), result.centres, jnp.zeros(()), 0.0)
    assert expected_calibration_error(result.confidence, correct) < expected_calibration_error(
        unit_confidence, correct
    )


def test_confidence_threshold_rejects_the_uncertain_points_only():
    x = np.array([[-5.0, 0], [5.0, 0], [0.01, 0]], np.float32)
    centres = jnp.array([[-5.0, 0], [5.0, 0]])
    labels, confidence = confident_labels(jnp.asarray(x), centres, jnp.log(jnp.asarray(4.0)), 0.9)
    np.testing.assert_array_equal(labels, [0, 1, -1])
    assert 0.5 <= float(confidence[2]) < 0.6


def _feature_tasks(x, truth, ways, shots, queries, num_tasks, seed=0):
    """Labelled few-shot tasks of feature vectors (classes 0..ways-1 of ``truth``)."""
    rng = np.random.default_rng(seed)
    supports, queries_ = [], []
    for _ in range(num_tasks):
        picks = [
            rng.choice(np.flatnonzero(truth == c), shots + queries, replace=False)
            for c in range(ways)
        ]
        supports.append(np.concatenate([p[:shots] for p in picks]))
        queries_.append(np.concatenate([p[shots:] for p in picks]))
    labels = lambda per_class: np.tile(
        np.repeat(np.arange(ways, dtype=np.int32), per_class), (num_tasks, 1)
    )
    return Task(
        Batch(jnp.asarray(x[np.stack(supports)]), jnp.asarray(labels(shots))),
        Batch(jnp.asarray(x[np.stack(queries_)]), jnp.asarray(labels(queries))),
    )


@dataclasses.dataclass(frozen=True)
class _Record:
    note: str


def _features_model(**overrides):
    settings = dict(
        n_components=2,
        n_clusters=2,
        n_partitions=2,
        ways=2,
        shots=2,
        queries=3,
        rounds=4,
        steps_per_round=20,
        meta_batch=2,
        log_every=10,
        threshold=0.5,
        progress=False,
    )
    return UnsupervisedMetaLearner(**{**settings, **overrides})


def test_self_training_on_separated_blobs_finds_the_split_and_stops():
    x, truth = make_blobs(300, centers=[[-6, 0], [6, 0]], cluster_std=1.0, random_state=0)
    model = _features_model().fit(x.astype(np.float32), eval_labels=truth)
    assert adjusted_rand_score(truth, model.pseudo_labels_) == 1.0
    assert model.history_[-1].get("stopped") in ("labels_changed", "nmi")
    assert len(model.history_) <= 4
    assert all(r["mask_rate"] > 0.9 for r in model.history_)


def test_eval_labels_never_reach_training():
    x, truth = make_blobs(200, centers=3, n_features=4, random_state=1)
    x = x.astype(np.float32)
    first = _features_model(n_clusters=3, rounds=2).fit(x, eval_labels=truth)
    second = _features_model(n_clusters=3, rounds=2).fit(
        x, eval_labels=np.random.default_rng(0).permutation(truth)
    )
    chex.assert_trees_all_equal(first.meta_params_, second.meta_params_)
    np.testing.assert_array_equal(first.pseudo_labels_, second.pseudo_labels_)
    assert first.history_[0]["ari"] != second.history_[0]["ari"]


@pytest.mark.parametrize(
    "algorithm", ["protonet", "maml", "fomaml", "metasgd", "anil", "reptile", "imaml"]
)
def test_every_algorithm_meta_trains_on_pseudo_tasks(algorithm):
    x, truth = make_blobs(240, centers=4, n_features=6, random_state=2)
    x = x.astype(np.float32)
    model = _features_model(algorithm=algorithm, n_clusters=4, rounds=1, ways=2).fit(x)
    chex.assert_tree_all_finite(model.meta_params_)
    tasks = _feature_tasks(x, truth, 2, 2, 3, 8)
    accuracy = model.score_tasks(tasks)
    assert accuracy.shape == (8,) and np.all((accuracy >= 0) & (accuracy <= 1))


def test_score_tasks_agrees_with_adapt_and_predict():
    x, truth = make_blobs(240, centers=4, n_features=6, random_state=3)
    x = x.astype(np.float32)
    model = _features_model(n_clusters=4, rounds=1).fit(x)
    tasks = _feature_tasks(x, truth, 3, 2, 4, 4)
    scores = model.score_tasks(tasks)
    for i in range(4):
        task = jax.tree_util.tree_map(lambda leaf: leaf[i], tasks)
        predicted = model.predict(task.query.x, model.adapt(task.support.x, task.support.y))
        assert scores[i] == pytest.approx(np.mean(predicted == np.asarray(task.query.y)))
    assert model.embed(x[:5]).shape == (5, 64)


def test_tsne_projection_is_an_option():
    x, truth = make_blobs(150, centers=3, n_features=5, random_state=4)
    model = _features_model(projection="tsne", n_clusters=3, rounds=1).fit(
        x.astype(np.float32), eval_labels=truth
    )
    assert model.projection_ is None and model.history_[0]["ari"] > 0.9


@pytest.mark.parametrize(
    "overrides, data, message",
    [
        (
            {},
            np.zeros((8, 3)),
            r"X has 8 points but one task needs ways \* \(shots \+ queries\) "
            r"= 2 \* \(2 \+ 3\) = 10",
        ),
        ({"n_clusters": 1}, np.zeros((40, 3)), "n_clusters = 1 is below ways = 2"),
        ({}, np.full((40, 3), np.nan), "X contains NaN or inf"),
        ({"threshold": 1.0}, np.zeros((40, 3)), r"threshold must be in \[0, 1\)"),
        ({"algorithm": "mamal"}, np.zeros((40, 3)), "algorithm"),
        ({"projection": "tsne", "n_components": 5}, np.zeros((40, 6)), "at most 3 dimensions"),
        ({"ways": 1}, np.zeros((40, 3)), "ways must be at least 2"),
    ],
)
def test_bad_input_is_refused_before_any_work(monkeypatch, overrides, data, message):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(meta_learner_module, "pca", no_work)
    monkeypatch.setattr(meta_learner_module, "cactus_partitions", no_work)
    with pytest.raises(ValueError, match=message):
        _features_model(**overrides).fit(data.astype(np.float32))


def test_adapt_before_fit_and_eval_labels_of_the_wrong_length_are_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        _features_model().adapt(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"eval_labels must have shape \(40,\)"):
        _features_model().fit(
            np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32), eval_labels=[0, 1]
        )
    x, truth = make_blobs(40, centers=2, n_features=3, random_state=0)
    with pytest.raises(
        ValueError, match=r"eval_tasks hold examples of shape \(2,\) but X's are \(3,\)"
    ):
        _features_model().fit(
            x.astype(np.float32), eval_tasks=_feature_tasks(x[:, :2], truth, 2, 1, 1, 2)
        )


def test_omniglot_arrays_give_the_pixels_of_the_png_reader(tmp_path):
    import io

    from PIL import Image

    from jmeta.data.omniglot import decode_image

    drawing = np.random.default_rng(0).random((1, 1, 105, 105)) > 0.2
    np.savez(tmp_path / "one.npz", images=drawing, labels=np.zeros((1, 1), np.int64))
    png = io.BytesIO()
    Image.fromarray(drawing[0, 0]).save(png, format="PNG")
    np.testing.assert_array_equal(
        load_omniglot_arrays(tmp_path / "one.npz", 28).images[0, 0],
        decode_image(png.getvalue(), 28),
    )


def test_omniglot_arrays_are_resized_inverted_and_row_selected(tmp_path):
    images = np.ones((4, 2, 105, 105), bool)
    images[2, :, :50, :] = False  # character 2 has strokes on its top half
    path = tmp_path / "set.npz"
    np.savez(path, images=images, labels=np.repeat(np.arange(4), 2).reshape(4, 2))
    loaded = load_omniglot_arrays(path, 28, rows=[2, 0])
    chex.assert_shape(loaded.images, (2, 2, 28, 28, 1))
    assert loaded.class_names == ("set/0003", "set/0001")
    assert loaded.images[0, 0, 0, 0, 0] == 1.0 and loaded.images[0, 0, -1, 0, 0] == 0.0
    assert loaded.images[1].max() == 0.0
    with pytest.raises(ValueError, match="rows must be indices"):
        load_omniglot_arrays(path, 28, rows=[4])


def test_a_fit_resumed_from_its_run_directory_ends_where_an_uninterrupted_one_does(tmp_path):
    x, _ = make_blobs(200, centers=3, n_features=4, random_state=5)
    x = x.astype(np.float32)
    config = {"note": "resume"}
    uninterrupted = _features_model(n_clusters=3, rounds=2).fit(x)
    with RunDir(tmp_path / "run", "unsupervised", _Record(**config)) as first:
        _features_model(n_clusters=3, rounds=1).fit(
            x, run=first
        )  # stops after round 0's checkpoint
    resumed = _features_model(n_clusters=3, rounds=2).fit(
        x, run=RunDir(tmp_path / "run", "unsupervised", _Record(**config), resume=True)
    )
    chex.assert_trees_all_equal(uninterrupted.meta_params_, resumed.meta_params_)
    np.testing.assert_array_equal(uninterrupted.pseudo_labels_, resumed.pseudo_labels_)
