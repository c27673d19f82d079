"""Each named algorithm is a configuration that trains, and differs where it should."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from tests.helpers import sinusoid_tasks, small_mlp


@pytest.mark.parametrize("name", sorted(jmeta.ALGORITHMS))
def test_every_algorithm_lowers_the_post_adaptation_loss(name):
    # MAML++'s per-step norm weights need norm layers, which the MLP has none of.
    overrides = {"per_step_norm": False} if name == "mamlpp" else {}
    meta_learner = jmeta.make_meta_learner(
        small_mlp(hidden=(16, 16)), jmeta.algorithm_config(name, num_inner_steps=2, **overrides)
    )
    meta_step = jmeta.make_meta_step(
        meta_learner,
        jmeta.make_sinusoid_sampler(5, 10),
        8,
        jmeta.default_optimizer(3e-3),
        num_steps=300,
    )
    evaluation = sinusoid_tasks(seed=7, num_tasks=64, shots=5, queries=20)
    before = float(meta_learner.evaluate(meta_learner.init(), evaluation, 2)["loss"][:, 2].mean())
    state, _ = meta_step.run(meta_step.init(meta_learner.init()), jax.random.key(1), 300)
    after = float(meta_learner.evaluate(state.meta_params, evaluation, 2)["loss"][:, 2].mean())
    assert np.isfinite(after) and after < 0.9 * before, (before, after)


def test_rates_have_the_shape_of_their_form():
    learner = small_mlp()
    kernel = learner.params["hidden_0"]["kernel"]
    shapes = {
        "maml": (),
        "maml_lr": (),
        "metasgd": kernel.shape,
        "lslr": (3,),
    }
    for name, shape in shapes.items():
        rates = (
            jmeta.make_meta_learner(learner, jmeta.algorithm_config(name, num_inner_steps=3))
            .init()
            .log_inner_lr[0]
        )
        leaf = rates if name in ("maml", "maml_lr") else rates["hidden_0"]["kernel"]
        assert leaf.shape == shape, name
        np.testing.assert_allclose(jnp.exp(leaf), 0.01, rtol=1e-6)


def test_fixed_rate_and_single_strategy_are_frozen_and_learned_rates_move():
    tasks_sampler = jmeta.make_sinusoid_sampler(5, 10)
    for name, rate_moves in (("maml", False), ("maml_lr", True)):
        meta_learner = jmeta.make_meta_learner(small_mlp(), jmeta.algorithm_config(name))
        meta_step = jmeta.make_meta_step(meta_learner, tasks_sampler, 4)
        start = meta_learner.init()
        state, _ = meta_step.run(meta_step.init(start), jax.random.key(0), 20)
        assert bool(state.meta_params.log_inner_lr[0] != start.log_inner_lr[0]) == rate_moves, name
        assert float(state.meta_params.strategy[0]) == float(start.strategy[0])


def test_anil_adapts_only_the_head():
    meta_learner = jmeta.make_meta_learner(
        small_mlp(), jmeta.algorithm_config("anil", num_inner_steps=2, inner_lr=0.1)
    )
    meta_params = meta_learner.init()
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks())
    adapted, _ = meta_learner.adapt(meta_params, task.support)
    adapted = adapted[0]
    assert bool(
        jnp.all(adapted["hidden_0"]["kernel"] == meta_params.learners[0]["hidden_0"]["kernel"])
    )
    assert not bool(jnp.all(adapted["head"]["kernel"] == meta_params.learners[0]["head"]["kernel"]))


def test_boil_keeps_the_head_fixed_inside_and_learns_it_outside():
    meta_learner = jmeta.make_meta_learner(
        small_mlp(), jmeta.algorithm_config("boil", num_inner_steps=2, inner_lr=0.1)
    )
    start = meta_learner.init()
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks())
    adapted = meta_learner.adapt(start, task.support)[0][0]
    initial = start.learners[0]
    for leaf in ("kernel", "bias"):
        assert bool(jnp.all(adapted["head"][leaf] == initial["head"][leaf])), leaf
    assert not bool(jnp.all(adapted["hidden_0"]["kernel"] == initial["hidden_0"]["kernel"]))
    # The head is a meta-parameter: the outer loop moves it.
    meta_step = jmeta.make_meta_step(meta_learner, jmeta.make_sinusoid_sampler(5, 10), 4)
    state, _ = meta_step.run(meta_step.init(start), jax.random.key(0), 5)
    assert not bool(
        jnp.all(state.meta_params.learners[0]["head"]["kernel"] == initial["head"]["kernel"])
    )


def test_boil_needs_a_body_and_a_head():
    with pytest.raises(ValueError, match="adapt='body' needs a submodule named 'head'"):
        jmeta.make_meta_learner(
            jmeta.Learner("bare", lambda p, x: x @ p["w"], {"w": jnp.zeros((1, 1))}),
            jmeta.algorithm_config("boil"),
        )
    linear = jmeta.linear_learner(jax.random.key(0))  # its one layer is the head
    with pytest.raises(ValueError, match="adapt='body' needs parameters outside the 'head'"):
        jmeta.make_meta_learner(linear, jmeta.algorithm_config("boil"))


def test_freezing_a_learner_keeps_its_initial_weights():
    learners = (small_mlp(0), small_mlp(1, name="b"))
    meta_learner = jmeta.make_meta_learner(
        learners, jmeta.MetaLearnerConfig(freeze=("learners/1",))
    )
    meta_step = jmeta.make_meta_step(meta_learner, jmeta.make_sinusoid_sampler(5, 10), 4)
    start = meta_learner.init()
    state, _ = meta_step.run(meta_step.init(start), jax.random.key(0), 10)
    same = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), state.meta_params.learners, start.learners
    )
    assert all(jax.tree_util.tree_leaves(same[1])) and not all(jax.tree_util.tree_leaves(same[0]))
    assert bool(jnp.any(state.meta_params.strategy != start.strategy))


def test_strategy_weights_follow_the_activation():
    logits = jnp.array([0.5, -1.0, 2.0])
    softmax = jmeta.strategy_weights(logits, "softmax")
    sigmoid = jmeta.strategy_weights(logits, "sigmoid")
    np.testing.assert_allclose(float(softmax.sum()), 1.0, rtol=1e-6)
    assert bool(jnp.all((sigmoid > 0) & (sigmoid < 1)))
