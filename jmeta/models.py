"""Base learners: Flax modules split once into ``(apply_fn, params)`` at the edge.

The core never holds a Module; it sees ``apply_fn(params, x)`` and a params pytree. A
``Learner`` also says which parameters adapt in the inner loop (ANIL adapts only the head).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmeta.validation import check_choice, check_positive_int

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class Learner(NamedTuple):
    """A base learner as the core sees it.

    Attributes:
      name: a label for tables and metrics.
      apply_fn: ``apply_fn(params, x) -> outputs`` for a batch ``x``.
      params: the initial parameters (a pytree); the meta-learner learns them.
      adapt_mask: a pytree of bools with the structure of ``params``; ``True`` leaves take
        inner-loop steps. ``None`` adapts every leaf.
    """

    name: str
    apply_fn: ApplyFn
    params: Any
    adapt_mask: Any = None


class MLP(nn.Module):
    """A ReLU multilayer perceptron; the last Dense layer is named ``head``."""

    hidden: Sequence[int] = (40, 40)
    out_features: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for index, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{index}")(x))
        return nn.Dense(self.out_features, name="head")(x)


class Linear(nn.Module):
    """A linear model ``x @ W + b`` (its one layer is the head)."""

    out_features: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.out_features, name="head")(x)


def make_learner(name: str, module: nn.Module, key: jax.Array, sample_x: jax.Array, *, adapt: str = "all") -> Learner:
    """Initialises ``module`` on ``sample_x`` and splits it into a ``Learner``.

    Args:
      name: label of the learner.
      module: a Flax module mapping a batch of inputs to outputs.
      key: PRNG key for the initial parameters.
      sample_x: an input batch with the right per-example shape.
      adapt: ``"all"`` adapts every parameter in the inner loop, ``"head"`` only the
        parameters under a submodule named ``head`` (ANIL).
    """
    params = module.init(key, sample_x)["params"]
    return Learner(name, lambda p, x: module.apply({"params": p}, x), params, head_mask(params, adapt))


def head_mask(params: Any, adapt: str) -> Any:
    """The ``adapt_mask`` for ``adapt="all"`` (None) or ``adapt="head"``."""
    if adapt == "all":
        return None
    if adapt != "head":
        raise ValueError(f"unknown adapt {adapt!r}; expected 'all' or 'head'")
    mask = jax.tree_util.tree_map_with_path(lambda path, _: any(getattr(k, "key", None) == "head" for k in path), params)
    if not any(jax.tree_util.tree_leaves(mask)):
        raise ValueError("adapt='head' needs a submodule named 'head' in the learner's parameters")
    return mask


def mlp_learner(key: jax.Array, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1,
                *, adapt: str = "all", name: str = "mlp") -> Learner:
    """The MAML sinusoid network by default: 1-40-40-1 with ReLU."""
    in_features = check_positive_int("in_features", in_features)
    module = MLP(tuple(check_positive_int("hidden", h) for h in hidden), check_positive_int("out_features", out_features))
    return make_learner(name, module, key, jnp.zeros((1, in_features), jnp.float32), adapt=adapt)


def linear_learner(key: jax.Array, in_features: int = 1, out_features: int = 1, *, name: str = "linear") -> Learner:
    """A linear base learner."""
    module = Linear(check_positive_int("out_features", out_features))
    return make_learner(name, module, key, jnp.zeros((1, check_positive_int("in_features", in_features)), jnp.float32))


def batch_affine(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Batch norm of ``x`` with batch statistics as a per-channel ``x * multiplier + offset``
    (both shaped ``(1, ..., 1, channels)``)."""
    axes = tuple(range(x.ndim - 1))
    shape = (1,) * (x.ndim - 1) + (-1,)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    multiplier = scale.reshape(shape) * jax.lax.rsqrt(variance + epsilon)
    return multiplier, bias.reshape(shape) - mean * multiplier


class TaskBatchNorm(nn.Module):
    """Batch norm that always normalises with the statistics of the batch it is given.

    Inside an inner loop the batch is one task's support (or query) set, as in the
    reference MAML, so no running averages exist to carry across tasks; the learned scale
    and bias are ordinary parameters that adapt like any other.

    With ``relu_pool`` it returns ``max_pool2x2(relu(norm(x)))`` with the pooling done
    first. Max-pooling commutes with a per-channel increasing map, and batch norm followed
    by ReLU is one wherever the channel's multiplier is non-negative; where it is negative
    the channel is pooled by its minimum instead. Only the statistics and one pooling pass
    touch the full-resolution map: at 28x28 that took normalisation, ReLU and pooling from
    1.03 s to 0.68 s (forward and backward, 32 tasks of 80 images, 2-core CPU).
    """

    epsilon: float = 1e-5
    relu_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        if self.relu_pool:
            return norm_relu_pool(x, scale, bias, self.epsilon)
        multiplier, offset = batch_affine(x, scale, bias, self.epsilon)
        return x * multiplier + offset


def norm_relu_pool(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """``max_pool2x2(relu(batch_norm(x)))`` with the pooling first (see ``TaskBatchNorm``)."""
    multiplier, offset = batch_affine(x, scale, bias, epsilon)
    sign = jnp.where(multiplier >= 0, 1.0, -1.0).astype(x.dtype)
    return nn.relu(max_pool2x2(x * sign) * (multiplier * sign) + offset)


def _same_padding(size: int, stride: int) -> tuple[int, int, int]:
    """Output size and (before, after) padding of a SAME 3x3 window along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + 3 - size, 0)
    return out, total // 2, total - total // 2


def _patches(x: jax.Array, stride: int) -> jax.Array:
    """im2col: the 3x3 SAME neighbourhoods of ``x`` (N, H, W, C) as (N, H', W', 9 C), (i, j, c) order.

    Built as stacks of three on non-minor axes, then a reshape: XLA:CPU never fuses a
    concatenation along the minor axis or of more than eight operands, so nine slices
    concatenated on the channel axis were nine materialised copies and then a tenth pass
    copying them together; this way the patches are written in one fused pass.
    """
    out_height, top, bottom = _same_padding(x.shape[-3], stride)
    out_width, left, right = _same_padding(x.shape[-2], stride)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    rows = [jnp.stack([padded[:, i:i + (out_height - 1) * stride + 1:stride, j:j + (out_width - 1) * stride + 1:stride]
                       for j in range(3)], axis=-2) for i in range(3)]
    return jnp.stack(rows, axis=-3).reshape((*x.shape[:-3], out_height, out_width, 9 * x.shape[-1]))


def conv3x3(x: jax.Array, kernel: jax.Array, stride: int = 1, *, keep_patches: bool = False) -> jax.Array:
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
    """Whether the stride-1 ``conv3x3`` of ``x`` takes the row-patch path: a small batch, more than 3 channels.

    With grey or RGB input the row patches would feed a matmul of depth 9 or less.
    """
    return x.shape[-1] > 3 and x.shape[-4] * x.shape[-3] * x.shape[-2] < ROW_PATCH_MAX_POSITIONS


def _row_patches(x: jax.Array) -> jax.Array:
    """The three horizontal taps of every row of the SAME-padded ``x``: (N, H + 2, W, 3 C), (j, c) order."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    width = x.shape[-2]
    taps = jnp.stack([padded[:, :, j:j + width] for j in range(3)], axis=-2)
    return taps.reshape((*taps.shape[:-2], 3 * x.shape[-1]))


def _row_patch_conv(x: jax.Array, rows: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv3x3(x, kernel)`` as one matmul of the row patches ``rows`` of ``x`` with all three kernel rows,
    then a shifted sum.

    Output row y is the sum over kernel rows i of (row patches of padded row y + i) @ kernel[i].
    """
    height, features = x.shape[-3], kernel.shape[-1]
    by_row = jnp.transpose(kernel, (1, 2, 0, 3)).reshape((3 * x.shape[-1], 3 * features))  # (j, c) x (i, f)
    taps = (rows @ by_row).reshape((x.shape[0], height + 2, x.shape[-2], 3, features))
    return sum(taps[:, i:i + height, :, i] for i in range(3))


def _row_patch_kernel_grad(x: jax.Array, rows: jax.Array, cotangent: jax.Array) -> jax.Array:
    """The kernel gradient of ``_row_patch_conv``: the row patches against the cotangent shifted by each kernel row."""
    height = x.shape[-3]
    padded = jnp.pad(cotangent, ((0, 0), (2, 2), (0, 0), (0, 0)))
    shifted = jnp.stack([padded[:, 2 - i:4 - i + height] for i in range(3)], axis=-2)  # (N, H + 2, W, 3, F)
    grad = rows.reshape((-1, rows.shape[-1])).T @ shifted.reshape((-1, 3 * cotangent.shape[-1]))
    return jnp.transpose(grad.reshape((3, x.shape[-1], 3, -1)), (2, 0, 1, 3))


def _columns(x: jax.Array) -> jax.Array:
    """What the stride-1 ``conv3x3`` of ``x`` multiplies its kernel with: row patches or im2col patches."""
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
    """The kernel whose SAME convolution is the transpose of ``kernel``'s: flipped, channels swapped."""
    return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


@jax.custom_vjp
def _conv3x3_kernel_grad(x: jax.Array, columns: jax.Array | None, cotangent: jax.Array) -> jax.Array:
    """The kernel gradient of ``conv3x3(x, kernel)`` for an output cotangent: ``patches.T @ cotangent``.

    ``columns`` is ``_columns(x)`` computed already, or None to compute it here. It is a
    cache of a function of ``x``: the gradient with respect to ``x`` counts the path through it.
    """
    if columns is None:
        columns = _columns(x)
    if _uses_row_patches(x):
        return _row_patch_kernel_grad(x, columns, cotangent)
    patches = columns.reshape((-1, 9 * x.shape[-1]))
    return (patches.T @ cotangent.reshape((-1, cotangent.shape[-1]))).reshape((3, 3, x.shape[-1], -1))


def _conv3x3_kernel_grad_forward(x, columns, cotangent):
    return _conv3x3_kernel_grad(x, columns, cotangent), (x, cotangent)


def _conv3x3_kernel_grad_backward(residuals, kernel_cotangent):
    # The kernel gradient is bilinear in (x, cotangent); both of its own gradients are
    # stride-1 SAME convolutions. Second-order MAML differentiates it once per inner step,
    # and autodiff's version transposed the patch matrix and scattered it back through
    # nine slices. ``columns`` gets no cotangent of its own (None: a symbolic zero), as
    # the one of ``x`` already holds the whole derivative.
    x, cotangent = residuals
    return _conv3x3_same(cotangent, _flip(kernel_cotangent)), None, _conv3x3_same(x, kernel_cotangent)


_conv3x3_kernel_grad.defvjp(_conv3x3_kernel_grad_forward, _conv3x3_kernel_grad_backward)


_conv3x3_same.defvjp(_conv3x3_same_forward, _conv3x3_same_backward)


CONV_IMPLEMENTATIONS = ("im2col", "xla")


def lax_conv3x3(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``conv3x3`` computed by ``lax.conv_general_dilated``."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv3x3(nn.Module):
    """A 3x3 convolution (SAME padding, stride 1 or 2): ``conv3x3`` (one matmul) or ``lax.conv``.

    Same parameters and outputs as ``nn.Conv(features, (3, 3), strides, padding="SAME")``.
    Under ``vmap`` over tasks with per-task weights (MAML's inner loop) XLA:CPU turns
    ``lax.conv`` into a grouped convolution that is very slow: the gradient of one 64->64
    layer for 32 tasks of 80 14x14 images took 99.6 s that way and 3.0 s as im2col. With
    ``conv="xla"`` it is ``lax.conv_general_dilated`` (for GPUs, where the
    grouped convolution is a library call; bench-fewshot measures both).
    """

    features: int
    stride: int = 1
    conv: str = "im2col"
    keep_patches: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.conv == "xla":
            out = lax_conv3x3(x, kernel, self.stride)
        else:
            out = conv3x3(x, kernel, self.stride, keep_patches=self.keep_patches)
        return out + bias.reshape((1, 1, 1, -1))


def max_pool2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 (VALID: an odd last row or column is dropped).

    Written as a reshape and a max rather than ``reduce_window``: the gradient of the
    latter is a select-and-scatter that XLA:CPU runs about 2x slower.
    """
    n, height, width, channels = x.shape
    x = x[:, :height // 2 * 2, :width // 2 * 2]
    return x.reshape((n, height // 2, 2, width // 2, 2, channels)).max(axis=(2, 4))


def conv_norm_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array, scale: jax.Array, norm_bias: jax.Array,
                        epsilon: float = 1e-5, *, keep_patches: bool = False) -> jax.Array:
    """``TaskBatchNorm(relu_pool=True)`` of ``conv3x3(x, kernel) + bias`` for inputs with few channels.

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


def _conv3x3_params(in_features: int, features: int) -> Callable:
    """Initialiser of ``Conv3x3``'s parameters as one dict (same names, shapes and initialisers)."""
    def init(key):
        return {"kernel": nn.initializers.lecun_normal()(key, (3, 3, in_features, features)),
                "bias": jnp.zeros((features,))}
    return init


class Conv4(nn.Module):
    """The conv4 of MAML and prototypical networks.

    Four blocks of 3x3 convolution (``filters`` channels), batch norm with batch
    statistics, ReLU and 2x2 max-pooling — or, with ``strided``, stride-2 convolutions
    and a final spatial mean instead of pooling, as MAML's Omniglot network. Then a
    linear ``head`` with ``ways`` outputs, or with ``ways=0`` the flattened embedding
    (prototypical networks). The pooled blocks compute the same function in a cheaper
    order on CPU (``TaskBatchNorm(relu_pool=True)``; the first block ``conv_norm_relu_pool``); parameter
    names and shapes are those of ``Conv3x3`` and ``TaskBatchNorm`` in every block. ``conv``
    is passed to ``Conv3x3`` (``"im2col"`` or ``"xla"``), and ``keep_patches`` to every
    im2col convolution (see ``_conv3x3_same_forward``); neither changes a parameter or a value.
    """

    ways: int = 5
    filters: int = 64
    strided: bool = False
    conv: str = "im2col"
    keep_patches: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for block in range(4):
            if block == 0 and not self.strided and x.shape[-1] <= 3:
                # Same parameter tree as the blocks below; see conv_norm_relu_pool.
                conv = self.param("conv_0", _conv3x3_params(x.shape[-1], self.filters))
                norm = self.param("norm_0", lambda _: {"scale": jnp.ones((self.filters,)),
                                                       "bias": jnp.zeros((self.filters,))})
                if self.conv == "im2col":
                    x = conv_norm_relu_pool(x, conv["kernel"], conv["bias"], norm["scale"], norm["bias"],
                                            keep_patches=self.keep_patches)
                else:
                    x = lax_conv3x3(x, conv["kernel"]) + conv["bias"].reshape((1, 1, 1, -1))
                    x = norm_relu_pool(x, norm["scale"], norm["bias"])
                continue
            x = Conv3x3(self.filters, 2 if self.strided else 1, self.conv, self.keep_patches, name=f"conv_{block}")(x)
            if self.strided:
                x = nn.relu(TaskBatchNorm(name=f"norm_{block}")(x))
            else:
                x = TaskBatchNorm(relu_pool=True, name=f"norm_{block}")(x)
        # Strided blocks leave 2x2 maps at 28x28 input; like MAML's Omniglot network they are
        # averaged, so both variants embed into ``filters`` features.
        x = jnp.mean(x, axis=(1, 2)) if self.strided else x.reshape((x.shape[0], -1))
        return nn.Dense(self.ways, name="head")(x) if self.ways else x


def conv4_learner(key: jax.Array, image_shape: Sequence[int] = (28, 28, 1), ways: int = 5, filters: int = 64,
                  *, strided: bool = False, conv: str = "im2col", keep_patches: bool | None = None, adapt: str = "all",
                  name: str = "conv4") -> Learner:
    """Conv4 as a base learner; ``ways=0`` gives the embedding network of prototypical networks.

    ``conv`` picks how each 3x3 convolution is computed, with the same parameters and
    outputs: ``"im2col"`` (one matmul; the fast path on CPU) or ``"xla"`` (``lax.conv``).
    ``keep_patches`` keeps each im2col convolution's patches for its kernel gradient behind
    an optimisation barrier: faster where all tasks share the weights (prototypical
    networks), only longer to compile where each task adapts its own (MAML). ``None``
    turns it on for the embedding network (``ways=0``). It changes no value.
    """
    check_choice("conv", conv, CONV_IMPLEMENTATIONS)
    if keep_patches is None:
        keep_patches = ways == 0
    elif not isinstance(keep_patches, bool):
        raise ValueError(f"keep_patches must be True, False or None, got {keep_patches!r}")
    if ways != 0:
        check_positive_int("ways", ways)
    if not strided and min(image_shape[:2]) < 16:
        raise ValueError(f"conv4 with max-pooling halves the image four times and needs at least 16x16 images, "
                         f"got image_shape {tuple(image_shape)}; use strided=True or larger images")
    module = Conv4(ways, check_positive_int("filters", filters), strided, conv, keep_patches)
    return make_learner(name, module, key, jnp.zeros((2, *image_shape), jnp.float32), adapt=adapt)


def with_linear_head(embedding: Learner, sample_x: jax.Array, ways: int, *, adapt: str = "all") -> Learner:
    """``embedding`` followed by a linear ``head`` of ``ways`` outputs, for the MAML family.

    The params are ``{"body": embedding.params, "head": {"kernel", "bias"}}``, so the body
    alone still embeds (``embedding.apply_fn(params["body"], x)``) and ANIL's
    ``adapt="head"`` finds the head. The kernel starts at zero, as MAML's output layer
    starts indifferent to the classes.
    """
    ways = check_positive_int("ways", ways)
    features = jax.eval_shape(embedding.apply_fn, embedding.params, sample_x).shape[-1]
    params = {"body": embedding.params, "head": {"kernel": jnp.zeros((features, ways)), "bias": jnp.zeros((ways,))}}

    def apply_fn(p, x):
        return embedding.apply_fn(p["body"], x) @ p["head"]["kernel"] + p["head"]["bias"][None, :]

    return Learner(f"{embedding.name}+head", apply_fn, params, head_mask(params, adapt))
