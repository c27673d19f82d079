"""Prototypical networks and gradient-based classification on tiny episodes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from jmeta.execution import Execution
from jmeta.models import conv4_learner
from jmeta.protonet import make_protonet, prototype_logits, prototypes
from jmeta.tasks import make_episode_sampler
from jmeta.training import fit


def test_prototype_logits_against_a_hand_computation():
    embeddings = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]])
    labels = jnp.array([0, 0, 1, 1])
    centres = prototypes(embeddings, labels, 2)
    np.testing.assert_allclose(centres, [[1.0, 0.0], [0.0, 3.0]])
    query = jnp.array([[1.0, 1.0], [3.0, 3.0]])
    # |(1,1)-(1,0)|^2 = 1, |(1,1)-(0,3)|^2 = 1 + 4 = 5; |(3,3)-(1,0)|^2 = 4 + 9, |(3,3)-(0,3)|^2 = 9
    np.testing.assert_allclose(prototype_logits(query, centres), [[-1.0, -5.0], [-13.0, -9.0]])


def _easy_images(classes=20, examples=8, seed=0):
    """Each class is a fixed random 12x12 pattern plus a little noise: easy to tell apart."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 1, 12, 12, 1)) > 0.5
    return (patterns + 0.2 * rng.normal(size=(classes, examples, 12, 12, 1))).astype(np.float32)


def _accuracy(meta_learner, meta_params, sampler, steps):
    tasks = jmeta.sample_tasks(sampler, jax.random.key(99), 50)
    return float(meta_learner.evaluate(meta_params, tasks, steps)["accuracy"][:, -1].mean())


@pytest.mark.slow
def test_tiny_protonet_training_beats_chance():
    sampler = make_episode_sampler(_easy_images(), ways=5, shots=1, queries=3)
    protonet = make_protonet(
        conv4_learner(jax.random.key(0), (12, 12, 1), ways=0, filters=8, strided=True),
        5,
        execution=Execution(scan=False),
    )
    meta_step = jmeta.make_meta_step(protonet, sampler, 4, jmeta.default_optimizer(3e-3))
    state = fit(
        meta_step,
        meta_step.init(protonet.init()),
        jax.random.key(1),
        30,
        log_every=10,
        checkpoint_every=10,
        progress=False,
    )
    assert _accuracy(protonet, state.meta_params, sampler, 0) > 0.6  # chance is 0.2


@pytest.mark.parametrize(
    "algorithm",
    [
        # MAML on conv4 runs in the default set through omniglot-runs and tests/test_api.py.
        pytest.param("maml", marks=pytest.mark.slow),
        pytest.param("fomaml", marks=pytest.mark.slow),
        pytest.param("metasgd", marks=pytest.mark.slow),
        pytest.param("anil", marks=pytest.mark.slow),
    ],
)
def test_tiny_gradient_based_classification_beats_chance(algorithm):
    sampler = make_episode_sampler(_easy_images(), ways=5, shots=1, queries=3)
    learner = conv4_learner(jax.random.key(0), (12, 12, 1), ways=5, filters=8, strided=True)
    meta_learner = jmeta.make_meta_learner(
        learner,
        jmeta.algorithm_config(algorithm, loss="ce", inner_lr=0.4, num_inner_steps=2),
        Execution(scan=False),
    )
    meta_step = jmeta.make_meta_step(meta_learner, sampler, 4, jmeta.default_optimizer(3e-3))
    state = fit(
        meta_step,
        meta_step.init(meta_learner.init()),
        jax.random.key(1),
        40,
        log_every=10,
        checkpoint_every=10,
        progress=False,
    )
    assert _accuracy(meta_learner, state.meta_params, sampler, 2) > 0.5


def test_task_chunks_give_the_same_protonet_gradient():
    sampler = make_episode_sampler(_easy_images(), ways=3, shots=1, queries=2)
    embedding = conv4_learner(jax.random.key(0), (12, 12, 1), ways=0, filters=4, strided=True)
    tasks = jmeta.sample_tasks(sampler, jax.random.key(1), 5)
    whole = make_protonet(embedding, 3)
    chunked = make_protonet(
        embedding, 3, execution=Execution(task_chunk=2)
    )  # 5 tasks: two chunks and a remainder
    # float32 sums in a different order: gradients of size ~1 agree to ~1e-6
    chex.assert_trees_all_close(
        jax.jit(chunked.meta_grad)(chunked.init(), tasks),
        jax.jit(whole.meta_grad)(whole.init(), tasks),
        rtol=1e-4,
        atol=1e-5,
    )
