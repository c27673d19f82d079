"""Meta-gradients against finite differences, in float64, for every kind of meta-parameter."""

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

import jmeta
from tests.helpers import sinusoid_tasks, small_mlp


def _meta_loss_of(meta_learner, tasks, part):
    """The meta-loss as a function of one part of the meta-parameters only."""
    base = meta_learner.init()

    def loss(value):
        return meta_learner.meta_loss(base._replace(**{part: value}), tasks)[0]

    return loss, getattr(base, part)


@pytest.mark.parametrize("inner_rate", ["fixed", "scalar", "per_param", "per_step_layer"])
@pytest.mark.parametrize("part", ["learners", "log_inner_lr"])
def test_meta_gradient_matches_finite_differences(x64, inner_rate, part):
    learner = small_mlp(dtype=jnp.float64)
    config = jmeta.MetaLearnerConfig(num_inner_steps=2, inner_lr=0.05, inner_rate=inner_rate)
    meta_learner = jmeta.make_meta_learner(learner, config)
    loss, value = _meta_loss_of(meta_learner, sinusoid_tasks(dtype=jnp.float64), part)
    check_grads(loss, (value,), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_strategy_gradient_matches_finite_differences(x64, activation):
    learners = (
        small_mlp(0, dtype=jnp.float64),
        small_mlp(1, hidden=(4,), dtype=jnp.float64, name="other"),
    )
    config = jmeta.MetaLearnerConfig(num_inner_steps=2, inner_lr=0.05, activation=activation)
    meta_learner = jmeta.make_meta_learner(learners, config)
    loss, value = _meta_loss_of(meta_learner, sinusoid_tasks(dtype=jnp.float64), "strategy")
    value = jnp.array([0.3, -0.2])
    check_grads(loss, (value,), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


def test_cross_entropy_meta_gradient_matches_finite_differences(x64):
    key = jax.random.key(3)
    learner = jmeta.mlp_learner(key, in_features=3, hidden=(6,), out_features=4)
    learner = learner._replace(
        params=jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), learner.params)
    )
    x = jax.random.normal(key, (2, 10, 3), jnp.float64)
    y = jax.random.randint(jax.random.fold_in(key, 1), (2, 10), 0, 4)
    tasks = jmeta.Task(jmeta.Batch(x[:, :6], y[:, :6]), jmeta.Batch(x[:, 6:], y[:, 6:]))
    meta_learner = jmeta.make_meta_learner(
        learner, jmeta.MetaLearnerConfig(loss="ce", inner_rate="scalar", inner_lr=0.1)
    )
    loss, value = _meta_loss_of(meta_learner, tasks, "learners")
    check_grads(loss, (value,), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


def test_every_trainable_meta_parameter_gets_a_nonzero_gradient():
    learners = (small_mlp(0), small_mlp(1, name="second"))
    meta_learner = jmeta.make_meta_learner(learners, jmeta.algorithm_config("metasgd"))
    grads, _ = meta_learner.meta_grad(meta_learner.init(), sinusoid_tasks())
    trainable = meta_learner.trainable(meta_learner.init())
    for grad, is_trainable in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(trainable)
    ):
        assert is_trainable
        assert float(jnp.abs(grad).max()) > 0


@pytest.mark.parametrize("algorithm", ["lslr", "anil"])
def test_rollout_meta_gradient_matches_finite_differences(x64, algorithm):
    config = jmeta.algorithm_config(algorithm, num_inner_steps=3, inner_lr=0.05, remat="rollout")
    meta_learner = jmeta.make_meta_learner(small_mlp(dtype=jnp.float64), config)
    tasks = sinusoid_tasks(dtype=jnp.float64)
    meta_params = meta_learner.init()
    check_grads(
        lambda m: meta_learner.meta_loss(m, tasks)[0],
        (meta_params,),
        order=1,
        modes=["rev"],
        eps=1e-6,
        atol=1e-5,
        rtol=1e-5,
    )
