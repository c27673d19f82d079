"""conv4 and its CPU kernels (jmeta.ops): each equal to its plain form, derivatives included."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.models import conv4_learner


def test_conv4_shapes():
    images = jnp.zeros((6, 28, 28, 1))
    for strided in (False, True):
        classifier = conv4_learner(jax.random.key(0), ways=5, filters=8, strided=strided)
        # Jitted: one compile per network rather than one per eager primitive.
        chex.assert_shape(jax.jit(classifier.apply_fn)(classifier.params, images), (6, 5))
        embedding = conv4_learner(jax.random.key(0), ways=0, filters=8, strided=strided)
        chex.assert_shape(
            jax.jit(embedding.apply_fn)(embedding.params, images), (6, 8)
        )  # 28 -> 1x1 after 4 halvings
    assert "head" in classifier.params and "norm_3" in classifier.params
    with pytest.raises(ValueError, match="at least 16x16 images"):
        conv4_learner(jax.random.key(0), (12, 12, 1))


def test_conv3x3_matches_flax_conv():
    import flax.linen as nn

    from jmeta.models import Conv3x3

    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    for stride in (1, 2):
        ours = Conv3x3(5, stride)
        params = ours.init(jax.random.key(1), x)
        reference = nn.Conv(5, (3, 3), strides=stride, padding="SAME")
        np.testing.assert_allclose(
            ours.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "stride, max_row_patch_positions, keep_patches",
    [(1, 0, False), (1, 0, True), (1, 10_000, False), (2, 0, False)],
    ids=["im2col", "im2col-kept-patches", "row-patches", "stride-2"],
)
def test_conv3x3_derivatives_to_third_order_match_lax_conv(
    x64, monkeypatch, stride, max_row_patch_positions, keep_patches
):
    # Float64 at a small shape: the hand-written VJPs of the stride-1 convolution (and of its
    # kernel gradient) must agree with lax.conv's autodiff to the first, the second (as
    # second-order MAML needs) and the third order, on the im2col and the row-patch path,
    # with the forward's patches recomputed in the backward pass or kept for it.
    from jmeta import ops
    from jmeta.ops import conv3x3

    monkeypatch.setattr(ops, "ROW_PATCH_MAX_POSITIONS", max_row_patch_positions)

    x = jax.random.normal(jax.random.key(0), (3, 7, 8, 4), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5), jnp.float64)
    assert ops._uses_row_patches(x) == (max_row_patch_positions > 3 * 7 * 8)

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def gradient_norm(conv):
        def loss(x, kernel):
            return jnp.sum(jnp.sin(conv(x, kernel)) ** 2)

        def norm(x, kernel):
            gx, gk = jax.grad(loss, (0, 1))(x, kernel)
            return jnp.sum(gx**2) + jnp.sum(gk**2)

        def second_norm(x, kernel):  # the kernel gradient's own VJP, differentiated once more
            gx, gk = jax.grad(norm, (0, 1))(x, kernel)
            return jnp.sum(gx**2) + jnp.sum(gk**2)

        return (
            jax.grad(loss, (0, 1))(x, kernel),
            jax.grad(norm, (0, 1))(x, kernel),
            jax.grad(second_norm, (0, 1))(x, kernel),
        )

    ours = gradient_norm(lambda x, k: conv3x3(x, k, stride, keep_patches=keep_patches))
    chex.assert_trees_all_close(ours, gradient_norm(reference), rtol=1e-9, atol=1e-9)


def test_kept_patches_change_no_gradient_under_vmap_with_a_shared_kernel():
    # Prototypical networks' shape of use: tasks vmapped, one kernel for all of them.
    from jmeta.ops import conv3x3

    x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

    def gradients(keep_patches):
        def loss(x, kernel):
            out = jax.vmap(lambda task: conv3x3(task, kernel, keep_patches=keep_patches))(x)
            return jnp.sum(jnp.tanh(out) ** 2)

        return jax.jit(jax.grad(loss, (0, 1)))(x, kernel)

    chex.assert_trees_all_close(gradients(True), gradients(False), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_conv4_keeps_patches_for_the_embedding_network_only():
    x = jax.random.normal(jax.random.key(2), (3, 16, 16, 1))

    def keeps_patches(learner):  # the kept patches sit behind an optimisation barrier
        gradient = jax.grad(lambda params: jnp.sum(learner.apply_fn(params, x)))
        return "optimization_barrier" in str(jax.make_jaxpr(gradient)(learner.params))

    embedding = conv4_learner(jax.random.key(0), (16, 16, 1), ways=0)
    recomputing = conv4_learner(jax.random.key(0), (16, 16, 1), ways=0, keep_patches=False)
    assert keeps_patches(embedding) and not keeps_patches(recomputing)
    assert not keeps_patches(conv4_learner(jax.random.key(0), (16, 16, 1), ways=5))
    assert keeps_patches(conv4_learner(jax.random.key(0), (16, 16, 1), ways=5, keep_patches=True))
    np.testing.assert_allclose(
        embedding.apply_fn(embedding.params, x),
        recomputing.apply_fn(recomputing.params, x),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="keep_patches must be True, False or None, got 'yes'"):
        conv4_learner(jax.random.key(0), (16, 16, 1), ways=0, keep_patches="yes")


def test_pool_first_block_matches_normalise_relu_then_pool(x64):
    # Pooling before the per-channel affine map is exact, also where the learned scale is
    # negative (those channels pool by their minimum); checked on values and gradients.
    import flax.linen as nn

    from jmeta.models import TaskBatchNorm
    from jmeta.ops import max_pool2x2

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            return max_pool2x2(nn.relu(TaskBatchNorm(name="norm")(x)))

    class PoolFirst(nn.Module):
        @nn.compact
        def __call__(self, x):
            return TaskBatchNorm(relu_pool=True, name="norm")(x)

    x = jax.random.normal(
        jax.random.key(0), (4, 9, 7, 6), jnp.float64
    )  # odd sizes: last row/column dropped
    params = {
        "params": {
            "norm": {
                "scale": jnp.array([1.5, -0.5, 0.2, -2.0, 1.0, -1.0]),
                "bias": jnp.array([0.1, 0.3, -0.2, 0.0, -1.0, 0.5]),
            }
        }
    }
    np.testing.assert_allclose(nn.max_pool(x, (2, 2), (2, 2), "VALID"), max_pool2x2(x))
    expected = Reference().apply(params, x)
    chex.assert_shape(expected, (4, 4, 3, 6))
    np.testing.assert_allclose(PoolFirst().apply(params, x), expected, rtol=1e-12, atol=1e-12)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    chex.assert_trees_all_close(
        jax.grad(loss(PoolFirst()), (0, 1))(params, x),
        jax.grad(loss(Reference()), (0, 1))(params, x),
        rtol=1e-10,
        atol=1e-10,
    )


def test_first_block_from_patch_statistics_matches_the_plain_block(x64):
    # conv4's first pooled block takes batch-norm statistics from the patch covariance and
    # pools before the bias; it must equal conv -> batch norm -> ReLU -> pool, values and
    # gradients, including channels with a negative scale.
    import flax.linen as nn

    from jmeta.ops import batch_affine, conv3x3, conv_norm_relu_pool, max_pool2x2

    x = jax.random.normal(jax.random.key(0), (4, 9, 8, 1), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 6), jnp.float64)
    bias = jax.random.normal(jax.random.key(2), (6,), jnp.float64)
    scale = jnp.array([1.5, -0.5, 0.2, -2.0, 1.0, -1.0])
    norm_bias = jnp.array([0.1, 0.3, -0.2, 0.0, -1.0, 0.5])

    def plain(x, kernel, bias, scale, norm_bias):
        y = conv3x3(x, kernel) + bias.reshape((1, 1, 1, -1))
        multiplier, offset = batch_affine(y, scale, norm_bias, 1e-5)
        return max_pool2x2(nn.relu(y * multiplier + offset))

    args = (x, kernel, bias, scale, norm_bias)
    np.testing.assert_allclose(conv_norm_relu_pool(*args), plain(*args), rtol=1e-12, atol=1e-12)
    loss = lambda block: lambda *a: jnp.sum(jnp.sin(block(*a)))
    chex.assert_trees_all_close(
        jax.grad(loss(conv_norm_relu_pool), range(5))(*args),
        jax.grad(loss(plain), range(5))(*args),
        rtol=1e-10,
        atol=1e-10,
    )


def test_pooled_conv4_keeps_the_parameter_tree_of_its_blocks():
    learner = conv4_learner(jax.random.key(0), (28, 28, 1), ways=5, filters=8)
    shapes = jax.tree_util.tree_map(jnp.shape, learner.params)
    for block in range(4):
        assert shapes[f"conv_{block}"] == {
            "kernel": (3, 3, 1 if block == 0 else 8, 8),
            "bias": (8,),
        }
        assert shapes[f"norm_{block}"] == {"scale": (8,), "bias": (8,)}
    assert shapes["head"] == {"kernel": (8, 5), "bias": (5,)}


def test_conv4_with_lax_conv_is_the_same_network():
    # conv="xla" (lax.conv, for GPUs) and the default im2col path: same parameters, same outputs.
    images = jax.random.normal(jax.random.key(3), (6, 28, 28, 1))
    for strided in (False, True):
        im2col = conv4_learner(jax.random.key(0), ways=5, filters=8, strided=strided)
        xla = conv4_learner(jax.random.key(0), ways=5, filters=8, strided=strided, conv="xla")
        chex.assert_trees_all_equal(im2col.params, xla.params)
        np.testing.assert_allclose(
            xla.apply_fn(im2col.params, images),
            im2col.apply_fn(im2col.params, images),
            rtol=1e-4,
            atol=1e-4,
        )
    with pytest.raises(ValueError, match="unknown conv 'cudnn'"):
        conv4_learner(jax.random.key(0), conv="cudnn")
