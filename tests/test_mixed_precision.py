"""bfloat16 compute: the base learner's passes in bfloat16, everything the loops keep in
float32, and meta-losses and meta-gradients within a stated tolerance of float32's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta

# bfloat16 keeps 8 significand bits (relative rounding 2**-9 = 0.2%); a meta-loss is a mean
# over many such products, so 2% leaves room for accumulation and still fails a real bug.
LOSS_TOLERANCE = 0.02
# Meta-gradients at the initial weights, as the cosine of the angle to float32's: measured
# 0.9999 on sinusoid and 0.965 on strided conv4 (0.83 with max-pooling, whose argmax flips
# under bfloat16 rounding and routes the gradient through other pixels).
GRADIENT_COSINE = {"sinusoid": 0.99, "conv4": 0.9}


def sinusoid_case(compute_dtype):
    learner = jmeta.mlp_learner(jax.random.key(0))
    config = jmeta.algorithm_config("maml", num_inner_steps=5, compute_dtype=compute_dtype)
    tasks = jmeta.sample_tasks(jmeta.make_sinusoid_sampler(10, 10), jax.random.key(1), 16)
    return jmeta.make_meta_learner(learner, config), tasks


def conv4_case(compute_dtype):
    learner = jmeta.conv4_learner(jax.random.key(0), (28, 28, 1), ways=5, filters=8, strided=True)
    config = jmeta.algorithm_config("maml", loss="ce", inner_lr=0.4, compute_dtype=compute_dtype)
    images = jax.random.normal(jax.random.key(2), (10, 4, 28, 28, 1))
    sampler = jmeta.make_episode_sampler(images, 5, 1, 2)
    tasks = jmeta.sample_tasks(sampler, jax.random.key(3), 2)
    return jmeta.make_meta_learner(learner, config, jmeta.execution_preset("cpu-conv")), tasks


def flat(tree):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


@pytest.mark.parametrize("name, case", [("sinusoid", sinusoid_case), ("conv4", conv4_case)])
def test_bfloat16_meta_loss_and_gradient_match_float32(name, case):
    reference, tasks = case("float32")
    mixed, _ = case("bfloat16")
    start = reference.init()
    # One compile each: meta_grad's metrics hold the meta-loss ("post/loss").
    grads, metrics = jax.jit(reference.meta_grad)(start, tasks)
    mixed_grads, mixed_metrics = jax.jit(mixed.meta_grad)(start, tasks)
    loss, mixed_loss = float(metrics["post/loss"]), float(mixed_metrics["post/loss"])
    assert abs(mixed_loss - loss) <= LOSS_TOLERANCE * abs(loss)
    assert mixed_loss != loss  # it did compute in another precision
    grads, mixed_grads = flat(grads), flat(mixed_grads)
    cosine = grads @ mixed_grads / (np.linalg.norm(grads) * np.linalg.norm(mixed_grads))
    assert cosine > GRADIENT_COSINE[name]


def test_bfloat16_keeps_weights_updates_and_gradients_float32():
    mixed, tasks = sinusoid_case("bfloat16")
    start = mixed.init()
    support = jax.tree_util.tree_map(lambda leaf: leaf[0], tasks.support)
    adapted, _ = mixed.adapt(start, support)
    grads, _ = mixed.meta_grad(start, tasks)
    for tree in (start, adapted, grads):
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(tree)} == {jnp.dtype("float32")}
    # ... while the products themselves run in bfloat16.
    assert "bf16" in str(jax.make_jaxpr(mixed.meta_loss)(start, tasks))


def test_bfloat16_prototypical_network_computes_its_embedding_in_bfloat16():
    # Traced, not compiled: the embedding's products in bfloat16, the loss and the
    # gradient of the float32 parameters in float32.
    images = jnp.zeros((10, 4, 16, 16, 1))
    tasks = jax.eval_shape(
        lambda key: jmeta.sample_tasks(jmeta.make_episode_sampler(images, 5, 1, 2), key, 2),
        jax.random.key(3),
    )
    embedding = jmeta.conv4_learner(jax.random.key(0), (16, 16, 1), ways=0, filters=4, strided=True)
    protonet = jmeta.make_protonet(embedding, 5, compute_dtype="bfloat16")
    start = protonet.init()
    assert "bf16" in str(jax.make_jaxpr(protonet.meta_loss)(start, tasks))
    grads, metrics = jax.eval_shape(protonet.meta_grad, start, tasks)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(grads)} == {jnp.dtype("float32")}
    assert metrics["post/loss"].dtype == jnp.float32


def test_unknown_compute_dtype_is_named():
    with pytest.raises(ValueError, match="compute_dtype"):
        jmeta.MetaLearnerConfig(compute_dtype="float16")
