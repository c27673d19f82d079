"""Convolution, normalisation and pooling kernels for conv4 on XLA:CPU, with their VJPs.

``jmeta.models`` builds conv4 from these; every kernel here computes exactly what its plain
form computes (``lax_conv3x3``, batch norm then ReLU then ``max_pool2x2``), and the tests
check each against it. They exist because XLA:CPU runs the plain forms slowly inside
``vmap`` over tasks with per-task weights (MAML's inner loop); on a GPU, ``conv="xla"``
uses ``lax.conv`` directly. The measurements behind each choice are in
``experiments/results/BENCHMARK_NOTES.md``.

- ``conv3x3``: a SAME 3x3 convolution as one matmul over im2col patches (large batches) or
  row patches (small ones), with hand-written VJPs for the input and kernel gradients.
- ``norm_relu_pool``: batch norm with batch statistics, ReLU and 2x2 max-pool, pooled first.
- ``conv_norm_relu_pool``: the first block for grey or RGB input, its batch statistics
  taken from the covariance of the input patches.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_affine(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array]:
    """Batch norm of ``x`` with batch statistics as a per-channel ``x * multiplier + offset``
    (both shaped ``(1, ..., 1, channels)``)."""
    axes = tuple(range(x.ndim - 1))
    shape = (1,) * (x.ndim - 1) + (-1,)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    multiplier = scale.reshape(shape) * jax.lax.rsqrt(variance + epsilon)
    return multiplier, bias.reshape(shape) - mean * multiplier


def norm_relu_pool(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = 1e-5
) -> jax.Array:
    """``max_pool2x2(relu(batch_norm(x)))`` with the pooling done first, bit for bit the same.

    Max-pooling commutes with a per-channel increasing map, and batch norm followed by ReLU
    is one wherever the channel's multiplier is non-negative; where it is negative the
    channel is pooled by its minimum instead. Only the statistics and one pooling pass touch
    the full-resolution map.
    """
    multiplier, offset = batch_affine(x, scale, bias, epsilon)
    sign = jnp.where(multiplier >= 0, 1.0, -1.0).astype(x.dtype)
    return nn.relu(max_pool2x2(x * sign) * (multiplier * sign) + offset)


def _same_padding(size: int, stride: int) -> tuple[int, int, int]:
    """Output size and (before, after) padding of a SAME 3x3 window along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + 3 - size, 0)
    return out, total // 2, total - total // 2


def _patches(x: jax.Array, stride: int) -> jax.Array:
    """im2col: the 3x3 SAME neighbourhoods of ``x`` (N, H, W, C) as (N, H', W', 9 C), (i, j, c)
    order.

    Built as stacks of three on non-minor axes, then a reshape: XLA:CPU never fuses a
    concatenation along the minor axis or of more than eight operands, so nine slices
    concatenated on the channel axis were nine materialised copies and then a tenth pass
    copying them together; this way the patches are written in one fused pass.
    """
    out_height, top, bottom = _same_padding(x.shape[-3], stride)
    out_width, left, right = _same_padding(x.shape[-2], stride)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    rows = [
        jnp.stack(
            [
                padded[
                    :,
                    i : i + (out_height - 1) * stride + 1 : stride,
                    j : j + (out_width - 1) * stride + 1 : stride,
                ]
                for j in range(3)
            ],
            axis=-2,
        )
        for i in range(3)
    ]
    return jnp.stack(rows, axis=-3).reshape((*x.shape[:-3], out_height, out_width, 9 * x.shape[-1]))


def conv3x3(
    x: jax.Array, kernel: jax.Array, stride: int = 1, *, keep_patches: bool = False
) -> jax.Array:
    """SAME 3x3 convolution of ``x`` (N, H, W, C) with ``kernel`` (3, 3, C, F), as one matmul.

    Equal to ``lax.conv_general_dilated`` with NHWC/HWIO and SAME padding. Stride 1 has a
    hand-written VJP (see ``_conv3x3_same``); stride 2 is left to autodiff.

    A stride-1 convolution of a small batch (fewer than ``ROW_PATCH_MAX_POSITIONS`` output
    positions: a support set) uses row patches instead: the three horizontal taps of each
    padded row, (N, H + 2, W, 3 C), times all three kernel rows at once, (3 C, 3 F), and the
    three row-shifted slices of that product summed. Why: XLA:CPU's fusion emitter compiles
    the nested nine-way stack of im2col about three times slower than a three-way stack,
    and second-order MAML has dozens of them; routing the small ones here took the 5-step
    meta-step's XLA compile from about 24 s to 15-17 s with no measured change in step time.
    Large batches keep im2col, whose single pass was 10-20% faster there.
    """
    if stride == 1:
        return _conv3x3_same(x, kernel, keep_patches)
    return _patches(x, stride) @ kernel.reshape((-1, kernel.shape[-1]))


# A convolution whose batch has fewer output positions (N * H * W) than this, a support set's
# typically, takes the row-patch path (see ``conv3x3``).
ROW_PATCH_MAX_POSITIONS = 2048


def _uses_row_patches(x: jax.Array) -> bool:
    """Whether the stride-1 ``conv3x3`` of ``x`` takes the row-patch path: a small batch, more than
    3 channels.

    With grey or RGB input the row patches would feed a matmul of depth 9 or less.
    """
    return x.shape[-1] > 3 and x.shape[-4] * x.shape[-3] * x.shape[-2] < ROW_PATCH_MAX_POSITIONS


def _row_patches(x: jax.Array) -> jax.Array:
    """The three horizontal taps of every row of the SAME-padded ``x``: (N, H + 2, W, 3 C), (j, c)
    order."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    width = x.shape[-2]
    taps = jnp.stack([padded[:, :, j : j + width] for j in range(3)], axis=-2)
    return taps.reshape((*taps.shape[:-2], 3 * x.shape[-1]))


def _row_patch_conv(x: jax.Array, rows: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv3x3(x, kernel)`` as one matmul of the row patches ``rows`` of ``x`` with all three
    kernel rows, then a shifted sum.

    Output row y is the sum over kernel rows i of (row patches of padded row y + i) @ kernel[i].
    """
    height, features = x.shape[-3], kernel.shape[-1]
    by_row = jnp.transpose(kernel, (1, 2, 0, 3)).reshape(
        (3 * x.shape[-1], 3 * features)
    )  # (j, c) x (i, f)
    taps = (rows @ by_row).reshape((x.shape[0], height + 2, x.shape[-2], 3, features))
    return sum(taps[:, i : i + height, :, i] for i in range(3))


def _row_patch_kernel_grad(x: jax.Array, rows: jax.Array, cotangent: jax.Array) -> jax.Array:
    """The kernel gradient of ``_row_patch_conv``: the row patches against the cotangent shifted by
    each kernel row."""
    height = x.shape[-3]
    padded = jnp.pad(cotangent, ((0, 0), (2, 2), (0, 0), (0, 0)))
    shifted = jnp.stack(
        [padded[:, 2 - i : 4 - i + height] for i in range(3)], axis=-2
    )  # (N, H + 2, W, 3, F)
    grad = rows.reshape((-1, rows.shape[-1])).T @ shifted.reshape((-1, 3 * cotangent.shape[-1]))
    return jnp.transpose(grad.reshape((3, x.shape[-1], 3, -1)), (2, 0, 1, 3))


def _columns(x: jax.Array) -> jax.Array:
    """What the stride-1 ``conv3x3`` of ``x`` multiplies its kernel with: row patches or im2col
    patches."""
    return _row_patches(x) if _uses_row_patches(x) else _patches(x, 1)


def _conv_from_columns(x: jax.Array, columns: jax.Array, kernel: jax.Array) -> jax.Array:
    if _uses_row_patches(x):
        return _row_patch_conv(x, columns, kernel)
    return columns @ kernel.reshape((-1, kernel.shape[-1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3_same(x: jax.Array, kernel: jax.Array, keep_patches: bool = False) -> jax.Array:
    return _conv_from_columns(x, _columns(x), kernel)


def _conv3x3_same_forward(x, kernel, keep_patches=False):
    # With ``keep_patches`` the kernel gradient takes the forward's im2col patches as a
    # residual kept behind an optimisation barrier. Under vmap with weights shared by all
    # tasks (prototypical networks) the forward matmul folds the tasks into its rows, and
    # XLA built the backward's recomputed patches a second time in the per-task shape (the
    # 14x14 layer's im2col twice: protonet step 2.29 -> 1.96 s). With per-task weights
    # (MAML) XLA already shares one pass between the two, and the residual only made the
    # 5-step program's kernel IR 6% larger, so there the backward recomputes them.
    if keep_patches and not _uses_row_patches(x):
        columns = jax.lax.optimization_barrier(_columns(x))
        return _conv_from_columns(x, columns, kernel), (x, columns, kernel)
    return _conv3x3_same(x, kernel), (x, None, kernel)


def _conv3x3_same_backward(keep_patches, residuals, cotangent):
    # Autodiff would pull the cotangent back through the patches as (M, F) @ (F, 9 C) and a
    # scatter-add of nine slices; XLA:CPU runs that matmul shape at under half the speed of
    # the forward one. The input gradient of a stride-1 SAME convolution is itself such a
    # convolution, of the cotangent with the flipped, transposed kernel, so it reuses the
    # fast path (and stays differentiable through this rule for second-order MAML).
    x, columns, kernel = residuals
    return _conv3x3_same(cotangent, _flip(kernel)), _conv3x3_kernel_grad(x, columns, cotangent)


def _flip(kernel: jax.Array) -> jax.Array:
    """The kernel whose SAME convolution is the transpose of ``kernel``'s: flipped, channels
    swapped."""
    return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


@jax.custom_vjp
def _conv3x3_kernel_grad(
    x: jax.Array, columns: jax.Array | None, cotangent: jax.Array
) -> jax.Array:
    """The kernel gradient of ``conv3x3(x, kernel)`` for an output cotangent: ``patches.T @
    cotangent``.

    ``columns`` is ``_columns(x)`` computed already, or None to compute it here. It is a
    cache of a function of ``x``: the gradient with respect to ``x`` counts the path through it.
    """
    if columns is None:
        columns = _columns(x)
    if _uses_row_patches(x):
        return _row_patch_kernel_grad(x, columns, cotangent)
    patches = columns.reshape((-1, 9 * x.shape[-1]))
    return (patches.T @ cotangent.reshape((-1, cotangent.shape[-1]))).reshape(
        (3, 3, x.shape[-1], -1)
    )


def _conv3x3_kernel_grad_forward(x, columns, cotangent):
    return _conv3x3_kernel_grad(x, columns, cotangent), (x, cotangent)


def _conv3x3_kernel_grad_backward(residuals, kernel_cotangent):
    # The kernel gradient is bilinear in (x, cotangent); both of its own gradients are
    # stride-1 SAME convolutions. Second-order MAML differentiates it once per inner step,
    # and autodiff's version transposed the patch matrix and scattered it back through
    # nine slices. ``columns`` gets no cotangent of its own (None: a symbolic zero), as
    # the one of ``x`` already holds the whole derivative.
    x, cotangent = residuals
    return (
        _conv3x3_same(cotangent, _flip(kernel_cotangent)),
        None,
        _conv3x3_same(x, kernel_cotangent),
    )


_conv3x3_kernel_grad.defvjp(_conv3x3_kernel_grad_forward, _conv3x3_kernel_grad_backward)


_conv3x3_same.defvjp(_conv3x3_same_forward, _conv3x3_same_backward)


def lax_conv3x3(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``conv3x3`` computed by ``lax.conv_general_dilated``."""
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def max_pool2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 (VALID: an odd last row or column is dropped).

    Written as a reshape and a max rather than ``reduce_window``: the gradient of the
    latter is a select-and-scatter that XLA:CPU runs about 2x slower.
    """
    n, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    return x.reshape((n, height // 2, 2, width // 2, 2, channels)).max(axis=(2, 4))


def conv_norm_relu_pool(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    scale: jax.Array,
    norm_bias: jax.Array,
    epsilon: float = 1e-5,
    *,
    keep_patches: bool = False,
) -> jax.Array:
    """``TaskBatchNorm(relu_pool=True)`` of ``conv3x3(x, kernel) + bias`` for inputs with few
    channels.

    The batch statistics of the convolution's output are computed from the mean and
    covariance of the input's 3x3 patches (a 9C x 9C matrix; small for grey or RGB images),
    the sign of each channel's batch-norm multiplier is folded into the kernel, and the
    bias enters after pooling: the only full-resolution arrays are the matmul's output and
    its gradient. For conv4's first block on 28x28 grey images this replaces some ten
    full-resolution passes of normalisation and bias.
    """
    patches = _patches(x, 1)
    flat = patches.reshape((-1, patches.shape[-1]))
    weights = kernel.reshape((-1, kernel.shape[-1]))
    patch_mean = jnp.mean(flat, axis=0, keepdims=True)
    centred = flat - patch_mean
    covariance = centred.T @ centred / flat.shape[0]
    mean = (patch_mean @ weights)[0] + bias
    variance = jnp.sum(weights * (covariance @ weights), axis=0)
    multiplier = scale * jax.lax.rsqrt(variance + epsilon)
    offset = norm_bias - mean * multiplier
    sign = jnp.where(multiplier >= 0, 1.0, -1.0).astype(x.dtype)
    shape = (1, 1, 1, -1)
    # conv3x3 rather than ``patches @ ...``: its VJP forms the kernel gradient as
    # ``patches.T @ cotangent``; autodiff's own transpose made XLA copy the full-resolution
    # cotangent into a transposed layout first (0.6 s per MAML step).
    convolved = conv3x3(x, kernel * sign.reshape(shape), keep_patches=keep_patches)
    pooled = max_pool2x2(convolved) + (bias * sign).reshape(shape)
    return nn.relu(pooled * (multiplier * sign).reshape(shape) + offset.reshape(shape))
