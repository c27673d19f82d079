"""Equivalences the core must hold: first order, vmap, remat, and the inner step itself."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from jmeta.execution import Execution
from tests.helpers import sinusoid_tasks, small_mlp


def test_first_order_equals_stop_gradient_on_the_inner_gradient():
    learner, tasks, alpha = small_mlp(), sinusoid_tasks(), 0.05
    fomaml = jmeta.make_meta_learner(
        learner, jmeta.algorithm_config("fomaml", num_inner_steps=2, inner_lr=alpha)
    )

    def reference_loss(params):
        def one_task(task):
            adapted = params
            for _ in range(2):
                grads = jax.grad(
                    lambda p: jmeta.mse(learner.apply_fn(p, task.support.x), task.support.y)
                )(adapted)
                adapted = jax.tree_util.tree_map(
                    lambda p, g: p - alpha * jax.lax.stop_gradient(g), adapted, grads
                )
            return jmeta.mse(learner.apply_fn(adapted, task.query.x), task.query.y)

        return jnp.mean(jax.vmap(one_task)(tasks))

    grads, _ = fomaml.meta_grad(fomaml.init(), tasks)
    chex.assert_trees_all_close(
        grads.learners[0], jax.grad(reference_loss)(learner.params), rtol=1e-5, atol=1e-6
    )
    maml = jmeta.make_meta_learner(
        learner, jmeta.algorithm_config("maml", num_inner_steps=2, inner_lr=alpha)
    )
    second_order, _ = maml.meta_grad(maml.init(), tasks)
    difference = jax.tree_util.tree_map(
        lambda a, b: jnp.abs(a - b).max(), second_order.learners, grads.learners
    )
    assert max(jax.tree_util.tree_leaves(difference)) > 1e-4  # first order really drops a term


def test_vmapped_meta_loss_equals_a_loop_over_tasks():
    meta_learner = jmeta.make_meta_learner(
        (small_mlp(0), small_mlp(1, name="b")), jmeta.algorithm_config("metasgd", num_inner_steps=3)
    )
    meta_params, tasks = meta_learner.init(), sinusoid_tasks(num_tasks=5)
    vmapped, _ = meta_learner.meta_loss(meta_params, tasks)
    looped = np.mean(
        [
            meta_learner.task_loss(meta_params, jax.tree_util.tree_map(lambda a: a[t], tasks))[0]
            for t in range(5)
        ]
    )
    np.testing.assert_allclose(float(vmapped), looped, rtol=1e-6)


@pytest.mark.parametrize(
    "algorithm",
    [
        "maml",
        "metasgd",
        pytest.param("fomaml", marks=pytest.mark.slow),
        pytest.param("reptile", marks=pytest.mark.slow),
    ],
)
def test_task_chunks_change_no_value(algorithm):
    # Chunks are vmapped in sequence and (for gradients) differentiated inside the map;
    # 7 tasks in chunks of 3 also exercises the remainder that does not fill a chunk.
    # Meta-SGD with two learners: the strategy weights get a gradient too.
    tasks = sinusoid_tasks(num_tasks=7)
    learners = (small_mlp(0), small_mlp(1, name="b")) if algorithm == "metasgd" else small_mlp()
    results = {}
    for chunk in (0, 1, 3):
        meta_learner = jmeta.make_meta_learner(
            learners,
            jmeta.algorithm_config(algorithm, num_inner_steps=2),
            Execution(task_chunk=chunk),
        )
        meta_params = meta_learner.init()
        results[chunk] = (
            jax.jit(meta_learner.meta_grad)(meta_params, tasks),
            meta_learner.meta_loss(meta_params, tasks),
            meta_learner.evaluate(meta_params, tasks, 2),
        )
    chex.assert_trees_all_close(results[1], results[0], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(results[3], results[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["lslr", "fomaml", "anil"])
def test_checkpointing_inner_steps_changes_no_value(algorithm):
    tasks = sinusoid_tasks()
    results = {}
    for remat in ("none", "step", "rollout"):
        meta_learner = jmeta.make_meta_learner(
            small_mlp(), jmeta.algorithm_config(algorithm, num_inner_steps=4, remat=remat)
        )
        results[remat] = jax.jit(meta_learner.meta_grad)(meta_learner.init(), tasks)
    chex.assert_trees_all_close(results["none"], results["step"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(results["none"], results["rollout"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "fomaml"])
def test_peeling_the_first_inner_step_changes_no_value(algorithm):
    tasks = sinusoid_tasks()
    results = {}
    for peel in (True, False):
        meta_learner = jmeta.make_meta_learner(
            small_mlp(),
            jmeta.algorithm_config(algorithm, num_inner_steps=3),
            Execution(peel_first_step=peel),
        )
        meta_params = meta_learner.init()
        results[peel] = (
            jax.jit(meta_learner.meta_grad)(meta_params, tasks),
            meta_learner.evaluate(meta_params, tasks, 3),
        )
        jaxpr = jax.make_jaxpr(lambda task: meta_learner.adapt(meta_params, task.support))(
            jax.tree_util.tree_map(lambda leaf: leaf[0], tasks)
        )
        # Peeled: one step outside a scan of the other two; unpeeled: a scan of all three.
        assert [eqn.params["length"] for eqn in jaxpr.eqns if eqn.primitive.name == "scan"] == [
            2 if peel else 3
        ]
    chex.assert_trees_all_close(results[True], results[False], rtol=1e-5, atol=1e-6)


def test_inner_loss_does_not_rise_after_a_small_step():
    meta_learner = jmeta.make_meta_learner(
        small_mlp(), jmeta.MetaLearnerConfig(num_inner_steps=3, inner_lr=1e-3)
    )
    tasks = sinusoid_tasks(num_tasks=16)
    trace = jax.vmap(lambda task: meta_learner.adapt(meta_learner.init(), task.support)[1])(tasks)
    losses = trace["inner/loss"][..., 0]  # (tasks, steps)
    assert bool(jnp.all(losses[:, 1:] <= losses[:, :-1]))
    assert bool(jnp.all(losses[:, -1] < losses[:, 0]))


def test_evaluate_trajectory_matches_adapt():
    meta_learner = jmeta.make_meta_learner(small_mlp(), jmeta.algorithm_config("maml"))
    meta_params, tasks = meta_learner.init(), sinusoid_tasks()
    trajectory = meta_learner.evaluate(meta_params, tasks, 3)
    chex.assert_shape(trajectory["loss"], (4, 4))
    task = jax.tree_util.tree_map(lambda a: a[2], tasks)
    adapted, _ = meta_learner.adapt(meta_params, task.support, 3)
    expected = jmeta.mse(meta_learner.predict(meta_params, adapted, task.query.x), task.query.y)
    np.testing.assert_allclose(trajectory["loss"][2, 3], expected, rtol=1e-6)
    np.testing.assert_allclose(
        trajectory["loss"][2, 0],
        jmeta.mse(
            meta_learner.predict(meta_params, meta_params.learners, task.query.x), task.query.y
        ),
        rtol=1e-6,
    )
