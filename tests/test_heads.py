"""Closed-form heads and the fine-tuning baseline, each by what defines it: R2D2's ridge head
against numpy.linalg.solve, matching-network logits against a hand computation,
prototypical networks unchanged, fine-tuning's pretraining batches and per-task heads; and
each training through the core."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from jmeta.matching import matching_logits
from jmeta.ridge import ridge_weights, with_intercept


@pytest.mark.parametrize("support", [5, 40])  # n <= d: the n x n Woodbury form; n > d: d x d
def test_ridge_weights_equal_numpy_solve_on_the_same_embeddings(support):
    rng = np.random.RandomState(0)
    features = with_intercept(jnp.asarray(rng.randn(support, 12), jnp.float32))
    targets = jax.nn.one_hot(rng.randint(0, 5, support), 5)
    weights = ridge_weights(features, targets, jnp.asarray(0.7))
    x, y = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    expected = np.linalg.solve(x.T @ x + 0.7 * np.eye(x.shape[1]), x.T @ y)
    np.testing.assert_allclose(weights, expected, rtol=2e-4, atol=2e-5)


def test_matching_logits_equal_a_hand_computation():
    rng = np.random.RandomState(1)
    queries, support = rng.randn(3, 6), rng.randn(8, 6)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    logits = matching_logits(
        jnp.asarray(queries, jnp.float32),
        jnp.asarray(support, jnp.float32),
        jnp.asarray(labels),
        4,
        jnp.asarray(7.0),
    )
    expected = np.zeros((3, 4))
    for q in range(3):
        cosines = [
            queries[q] @ s / (np.linalg.norm(queries[q]) * np.linalg.norm(s)) for s in support
        ]
        attention = np.exp(7.0 * np.array(cosines))
        attention /= attention.sum()
        for c in range(4):
            expected[q, c] = np.log(attention[labels == c].sum())
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(logits).sum(axis=1), 1.0, rtol=1e-5)


def _embedding(filters=4):
    # Strided conv4 on 8x8 images: the smallest conv4, quick to compile.
    return jmeta.conv4_learner(jax.random.key(0), (8, 8, 1), ways=0, filters=filters, strided=True)


def _data(classes=8, size=8):
    return np.random.RandomState(0).rand(classes, 6, size, size, 1).astype(np.float32)


@pytest.mark.parametrize(
    "make, head_keys",
    [
        (jmeta.make_matching_network, ("log_scale",)),
        (jmeta.make_ridge_head, ("log_lambda", "log_scale")),
    ],
)
def test_closed_form_heads_train_on_episodes_and_learn_their_head(make, head_keys):
    embedding = _embedding()
    meta_learner = make(embedding, 3)
    start = meta_learner.init()
    assert sorted(start.learners[0]) == ["body", "head"]
    assert tuple(sorted(start.learners[0]["head"])) == head_keys
    sampler = jmeta.make_episode_sampler(_data(), 3, 2, 2)
    state = jmeta.train(
        meta_learner, sampler, jax.random.key(1), 20, meta_batch=2, log_every=10, progress=False
    )
    for key in head_keys:
        assert float(state.meta_params.learners[0]["head"][key]) != float(
            start.learners[0]["head"][key]
        )
    # One model scores tasks of any number of ways; evaluate gives one column.
    tasks = jmeta.sample_tasks(jmeta.make_episode_sampler(_data(), 4, 1, 2), jax.random.key(2), 3)
    accuracy = jmeta.evaluate(make(meta_learner.learners[0], 4), state.meta_params, tasks)
    assert accuracy["accuracy"].shape == (3, 1)
    assert np.all((accuracy["accuracy"] >= 0) & (accuracy["accuracy"] <= 1))


def test_protonet_keeps_its_meta_parameter_layout():
    embedding = _embedding()
    start = jmeta.make_protonet(embedding, 3).init()
    assert jax.tree_util.tree_structure(start.learners[0]) == jax.tree_util.tree_structure(
        embedding.params
    )


def test_finetune_pretrains_on_all_classes_and_fits_a_head_per_task():
    data = _data(classes=6)
    embedding = _embedding(filters=16)  # support points in 16 dimensions: separable
    baseline = jmeta.make_finetune(embedding, 3, num_classes=24)  # 6 characters x 4 rotations
    sampler = jmeta.make_batch_sampler(data, 16, rotations=True)
    batch = sampler(jax.random.key(0))
    assert batch.support.x.shape == (16, 8, 8, 1) and int(batch.support.y.max()) < 24
    state = jmeta.train(
        baseline, sampler, jax.random.key(1), 30, meta_batch=1, log_every=10, progress=False
    )
    batches = jmeta.sample_tasks(sampler, jax.random.key(5), 4)
    meta_loss = jax.jit(baseline.meta_loss)
    assert float(meta_loss(state.meta_params, batches)[0]) < float(
        meta_loss(baseline.init(), batches)[0]
    )
    tasks = jmeta.sample_tasks(jmeta.make_episode_sampler(data, 3, 2, 2), jax.random.key(2), 4)
    result = jmeta.evaluate(baseline, state.meta_params, tasks)
    assert result["accuracy"].shape == (4, 1)
    # The head fitted on a task's support classifies that support set.
    task = jax.tree_util.tree_map(lambda a: a[0], tasks)
    fit_and_predict = jax.jit(
        lambda params, support: baseline.predict(
            params, baseline.adapt(params, support)[0], support.x
        )
    )
    predicted = jnp.argmax(fit_and_predict(state.meta_params, task.support), -1)
    assert float(jnp.mean(predicted == task.support.y)) == 1.0


def test_batch_sampler_labels_each_rotation_as_its_own_class():
    data = np.zeros((3, 2, 4, 4, 1), np.float32)
    data[:, :, 0, 0] = 1.0  # a mark in the top-left corner of every image
    batch = jmeta.make_batch_sampler(data, 64, rotations=True)(jax.random.key(0)).support
    turns = np.asarray(batch.y) // 3
    corners = [(0, 0), (3, 0), (3, 3), (0, 3)]  # where rot90 by k quarter turns moves it
    for image, k in zip(np.asarray(batch.x), turns):
        assert image[corners[k][0], corners[k][1], 0] == 1.0
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        jmeta.make_batch_sampler(data, 0)
