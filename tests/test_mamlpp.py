"""MAML++'s settings, each by what defines it: the multi-step loss and its annealed weights,
derivative-order annealing, per-step batch-norm weights, the cosine-annealed outer rate."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmeta
from jmeta.models import TaskBatchNorm
from jmeta.objective import multi_step_weights
from jmeta.outer import COSINE_FLOOR, cosine_annealed
from tests.helpers import sinusoid_tasks, small_mlp


def test_multi_step_weights_sum_to_one_and_anneal_toward_the_last_step():
    steps = 5
    fractions = np.append(np.linspace(0.0, 0.98, 50), [1.0, 1.2])
    weights = np.stack([np.asarray(multi_step_weights(steps, f)) for f in fractions])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights[0], 1.0 / steps, rtol=1e-6)  # uniform at the start
    assert np.all(np.diff(weights[:, -1]) >= -1e-7)  # the last step's weight only grows
    annealing = fractions < 0.99
    assert np.all(np.diff(weights[annealing, 0]) <= 1e-7)  # earlier ones only shrink
    assert weights[annealing, 0].min() == pytest.approx(0.03 / steps)  # to MAML++'s floor
    np.testing.assert_allclose(weights[-1], np.eye(steps)[-1])  # after annealing: last only
    np.testing.assert_allclose(multi_step_weights(1, 0.3), [1.0])


def test_multi_step_loss_weights_the_query_loss_after_every_step():
    config = jmeta.MetaLearnerConfig(num_inner_steps=3, inner_lr=0.02, multi_step_loss=0.5)
    meta_learner = jmeta.make_meta_learner(small_mlp(), config)
    meta_params = meta_learner.init()
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks())
    one_task = jax.tree_util.tree_map(lambda a: a[None], task)
    # The query loss after steps 1, 2 and 3.
    after_each = jmeta.evaluate(meta_learner, meta_params, one_task, 3)["loss"][0, 1:]
    task_loss = jax.jit(meta_learner.task_loss)
    for progress in (0.0, 0.2, 0.7):
        loss, _ = task_loss(meta_params, task, jnp.asarray(progress))
        expected = np.dot(multi_step_weights(3, progress / 0.5), after_each)
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Without progress (and after annealing) only the last step's loss counts.
    np.testing.assert_allclose(task_loss(meta_params, task)[0], after_each[-1], rtol=1e-5)


def test_derivative_order_annealing_is_first_order_first_then_second_order():
    common = dict(num_inner_steps=2, inner_lr=0.05)
    annealed = jmeta.make_meta_learner(
        small_mlp(), jmeta.MetaLearnerConfig(first_order_until=0.4, **common)
    )
    first = jmeta.make_meta_learner(small_mlp(), jmeta.algorithm_config("fomaml", **common))
    second = jmeta.make_meta_learner(small_mlp(), jmeta.algorithm_config("maml", **common))
    tasks = sinusoid_tasks()
    meta_params = annealed.init()
    grad = jax.jit(annealed.meta_grad)
    early, _ = grad(meta_params, tasks, jnp.asarray(0.1))
    late, _ = grad(meta_params, tasks, jnp.asarray(0.6))
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        early,
        first.meta_grad(meta_params, tasks)[0],
    )
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        late,
        second.meta_grad(meta_params, tasks)[0],
    )
    assert not np.allclose(early.learners[0]["head"]["kernel"], late.learners[0]["head"]["kernel"])


class NormNet(nn.Module):
    """A stride-2 convolution, conv4's batch norm (``norm_0``), ReLU and a linear head: the
    smallest network with a norm layer, for what MAML++'s per-step weights do (conv4's own
    kernels are tested in test_ops.py and only lengthen the compile here)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=2, name="conv_0")(x)
        x = nn.relu(TaskBatchNorm(name="norm_0")(x))
        return nn.Dense(3, name="head")(x.reshape((x.shape[0], -1)))


def _norm_net():
    return jmeta.make_learner("norm_net", NormNet(), jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def _conv_tasks(ways=3, num_tasks=2):
    data = np.random.RandomState(0).rand(6, 4, 8, 8, 1).astype(np.float32)
    return jmeta.sample_tasks(
        jmeta.make_episode_sampler(data, ways, 1, 2), jax.random.key(1), num_tasks
    )


def test_per_step_norm_weights_serve_their_step_and_do_not_adapt():
    config = jmeta.MetaLearnerConfig(loss="ce", num_inner_steps=2, inner_lr=0.4, per_step_norm=True)
    meta_learner = jmeta.make_meta_learner(_norm_net(), config)
    meta_params = meta_learner.init()
    norm = meta_params.learners[0]["norm_0"]
    assert norm["scale"].shape == (3, 4) and meta_params.learners[0]["conv_0"]["kernel"].ndim == 4
    tasks = _conv_tasks()
    # Changing the weights of the network after 2 steps changes only the query loss after
    # 2 (and more) steps; the losses after 0 and 1 step use entries 0 and 1.
    before = jmeta.evaluate(meta_learner, meta_params, tasks, 3)["loss"]
    changed = jax.tree_util.tree_map(lambda a: a, meta_params.learners[0])
    changed["norm_0"] = {"scale": norm["scale"].at[2].mul(3.0), "bias": norm["bias"].at[2].add(1.0)}
    after = jmeta.evaluate(meta_learner, meta_params._replace(learners=(changed,)), tasks, 3)[
        "loss"
    ]
    np.testing.assert_allclose(after[:, :2], before[:, :2], rtol=1e-6)
    assert np.all(np.abs(after[:, 2:] - before[:, 2:]) > 1e-4)
    # The inner loop leaves them alone; the outer loop learns every entry.
    adapted = meta_learner.adapt(meta_params, jax.tree_util.tree_map(lambda a: a[0], tasks).support)
    np.testing.assert_array_equal(adapted[0][0]["norm_0"]["scale"], norm["scale"][2])
    grads, _ = jax.jit(meta_learner.meta_grad)(meta_params, tasks)
    assert np.all(np.abs(np.asarray(grads.learners[0]["norm_0"]["scale"])).sum(axis=1) > 0)


def test_per_step_norm_names_a_learner_without_norm_layers():
    with pytest.raises(ValueError, match="per_step_norm=True needs normalisation layers"):
        jmeta.make_meta_learner(small_mlp(), jmeta.algorithm_config("mamlpp"))


def test_cosine_outer_schedule_scales_the_updates_from_one_down_to_the_floor():
    optimizer = cosine_annealed(optax.sgd(1.0), 100)
    params = jnp.zeros(())
    state = optimizer.init(params)
    sizes = []
    for _ in range(101):
        updates, state = optimizer.update(jnp.ones(()), state)
        sizes.append(-float(updates))
    assert sizes[0] == pytest.approx(1.0) and sizes[50] == pytest.approx((1 + COSINE_FLOOR) / 2)
    assert sizes[100] == pytest.approx(COSINE_FLOOR) and np.all(np.diff(sizes) <= 1e-7)


def test_an_annealed_config_needs_the_run_length():
    meta_learner = jmeta.make_meta_learner(
        small_mlp(), jmeta.MetaLearnerConfig(outer_schedule="cosine")
    )
    with pytest.raises(ValueError, match="give make_meta_step num_steps="):
        jmeta.make_meta_step(meta_learner, jmeta.make_sinusoid_sampler(5, 10), 4)


def test_mamlpp_learns_a_different_norm_for_each_step():
    config = jmeta.algorithm_config("mamlpp", loss="ce", num_inner_steps=2, inner_lr=0.4)
    meta_learner = jmeta.make_meta_learner(_norm_net(), config)
    data = np.random.RandomState(0).rand(6, 4, 8, 8, 1).astype(np.float32)
    sampler = jmeta.make_episode_sampler(data, 3, 1, 2)
    state = jmeta.train(
        meta_learner, sampler, jax.random.key(2), 10, meta_batch=2, log_every=5, progress=False
    )
    scale = np.asarray(state.meta_params.learners[0]["norm_0"]["scale"])  # (3 steps, filters)
    assert np.all(np.isfinite(scale)) and not np.allclose(scale[0], scale[2])
