"""Bad input raises a clear error that names the parameter, before any XLA trace."""

import jax
import jax.numpy as jnp
import pytest

import jmeta
from jmeta.config import override
from jmeta.execution import Execution
from tests.helpers import sinusoid_tasks, small_mlp


@pytest.mark.parametrize("steps", [0, -3, 1.5])
def test_inner_steps_must_be_positive_integers(steps):
    with pytest.raises(ValueError, match="num_inner_steps"):
        jmeta.MetaLearnerConfig(num_inner_steps=steps)


def test_evaluation_steps_must_be_positive():
    meta_learner = jmeta.make_meta_learner(small_mlp())
    with pytest.raises(ValueError, match="num_steps"):
        meta_learner.evaluate(meta_learner.init(), sinusoid_tasks(), 0)


def test_mismatched_support_and_query_shapes():
    meta_learner = jmeta.make_meta_learner(small_mlp())
    tasks = sinusoid_tasks()
    wrong_features = tasks._replace(query=jmeta.Batch(jnp.zeros((4, 7, 2)), tasks.query.y))
    with pytest.raises(ValueError, match="tasks.support.x has per-example shape"):
        meta_learner.meta_loss(meta_learner.init(), wrong_features)
    wrong_count = tasks._replace(query=jmeta.Batch(tasks.query.x[:3], tasks.query.y[:3]))
    with pytest.raises(ValueError, match="number of tasks"):
        jax.jit(meta_learner.meta_loss)(
            meta_learner.init(), wrong_count
        )  # caught at trace time too
    wrong_labels = tasks._replace(support=jmeta.Batch(tasks.support.x, tasks.support.y[:, :2]))
    with pytest.raises(
        ValueError, match="tasks.support.x has 5 examples but tasks.support.y has 2"
    ):
        meta_learner.meta_grad(meta_learner.init(), wrong_labels)


def test_nan_in_the_data():
    meta_learner = jmeta.make_meta_learner(small_mlp())
    tasks = sinusoid_tasks()
    tasks = tasks._replace(
        support=jmeta.Batch(tasks.support.x.at[1, 2, 0].set(jnp.nan), tasks.support.y)
    )
    with pytest.raises(ValueError, match=r"tasks.support.x contains 1 non-finite"):
        meta_learner.meta_loss(meta_learner.init(), tasks)
    with pytest.raises(ValueError, match=r"tasks.support.x contains"):
        meta_learner.evaluate(meta_learner.init(), tasks, 2)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown algorithm 'mamll'.*'maml'"):
        jmeta.algorithm_config("mamll")
    with pytest.raises(ValueError, match="unknown MetaLearnerConfig field"):
        jmeta.algorithm_config("maml", inner_steps=3)
    with pytest.raises(ValueError, match="unknown inner_rate 'per_layer'"):
        jmeta.MetaLearnerConfig(inner_rate="per_layer")
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        jmeta.MetaLearnerConfig(activation="relu")
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        jmeta.MetaLearnerConfig(loss="l1")
    with pytest.raises(ValueError, match="inner_lr must be a positive"):
        jmeta.MetaLearnerConfig(inner_lr=-0.1)
    with pytest.raises(ValueError, match="task_chunk must be a non-negative integer, got -2"):
        Execution(task_chunk=-2)
    with pytest.raises(ValueError, match="peel_first_step must be True or False, got 'no'"):
        Execution(peel_first_step="no")


def test_bad_learners_and_samplers():
    with pytest.raises(ValueError, match="at least one base learner"):
        jmeta.make_meta_learner(())
    with pytest.raises(ValueError, match="adapt='head'"):
        jmeta.make_meta_learner(
            small_mlp()._replace(params={"body": small_mlp().params["hidden_0"]}),
            jmeta.algorithm_config("anil"),
        )
    with pytest.raises(ValueError, match="shots must be a positive integer, got 0"):
        jmeta.make_sinusoid_sampler(0, 5)
    with pytest.raises(ValueError, match="meta_batch"):
        jmeta.make_meta_step(
            jmeta.make_meta_learner(small_mlp()), jmeta.make_sinusoid_sampler(5, 5), 0
        )
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        jmeta.make_meta_step(
            jmeta.make_meta_learner(small_mlp()), jmeta.make_sinusoid_sampler(5, 5), 2, "adam"
        )


def test_config_overrides_name_the_field():
    from jmeta.experiments.sinusoid import Config

    assert override(Config(), ["shots=5,10", "num_steps=7", "pretrained_baseline=false"]).shots == (
        5,
        10,
    )
    with pytest.raises(ValueError, match="unknown config field 'step'"):
        override(Config(), ["step=3"])
    with pytest.raises(ValueError, match="'num_steps' expects int, got 'many'"):
        override(Config(), ["num_steps=many"])
    with pytest.raises(ValueError, match="expected field=value"):
        override(Config(), ["num_steps"])
