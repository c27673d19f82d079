"""Base learners: Flax modules split once into ``(apply_fn, params)`` at the edge.

The core never holds a Module; it sees ``apply_fn(params, x)`` and a params pytree. A
``Learner`` also says which parameters adapt in the inner loop (ANIL adapts only the head).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmeta import ops
from jmeta.execution import CONV_IMPLEMENTATIONS
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
      input_shape: the shape of one input example (``make_learner`` records it), against
        which tasks are checked before anything compiles; ``None`` checks only what the
        learner's outputs allow.
    """

    name: str
    apply_fn: ApplyFn
    params: Any
    adapt_mask: Any = None
    input_shape: tuple | None = None


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


def make_learner(name: str, module: nn.Module, key: jax.Array, sample_x: jax.Array) -> Learner:
    """Initialises ``module`` on ``sample_x`` and splits it into a ``Learner``.

    Args:
      name: label of the learner.
      module: a Flax module mapping a batch of inputs to outputs.
      key: PRNG key for the initial parameters.
      sample_x: an input batch with the right per-example shape.

    Every parameter adapts in the inner loop; ANIL (only the ``head`` submodule adapts) is
    switched on in one place, ``MetaLearnerConfig(adapt="head")``.
    """
    params = module.init(key, sample_x)["params"]
    return Learner(
        name,
        lambda p, x: module.apply({"params": p}, x),
        params,
        input_shape=tuple(sample_x.shape[1:]),
    )


def head_mask(params: Any, adapt: str) -> Any:
    """The ``adapt_mask`` for ``adapt="all"`` (None), ``"head"`` (ANIL: only the ``head``
    submodule adapts) or ``"body"`` (BOIL: everything but the ``head`` adapts)."""
    if adapt == "all":
        return None
    if adapt not in ("head", "body"):
        raise ValueError(f"unknown adapt {adapt!r}; expected 'all', 'head' or 'body'")
    in_head = jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(k, "key", None) == "head" for k in path), params
    )
    if not any(jax.tree_util.tree_leaves(in_head)):
        raise ValueError(
            f"adapt={adapt!r} needs a submodule named 'head' in the learner's parameters"
        )
    if adapt == "head":
        return in_head
    mask = jax.tree_util.tree_map(lambda leaf: not leaf, in_head)
    if not any(jax.tree_util.tree_leaves(mask)):
        raise ValueError("adapt='body' needs parameters outside the 'head' submodule")
    return mask


def norm_mask(params: Any) -> Any:
    """True on the leaves of normalisation layers: those under a module whose name starts
    with ``norm`` (conv4's ``norm_0`` ... ``norm_3``), for MAML++'s per-step norm weights."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(str(getattr(k, "key", "")).startswith("norm") for k in path), params
    )


def mlp_learner(
    key: jax.Array,
    in_features: int = 1,
    hidden: Sequence[int] = (40, 40),
    out_features: int = 1,
    *,
    name: str = "mlp",
) -> Learner:
    """The MAML sinusoid network by default: 1-40-40-1 with ReLU."""
    in_features = check_positive_int("in_features", in_features)
    module = MLP(
        tuple(check_positive_int("hidden", h) for h in hidden),
        check_positive_int("out_features", out_features),
    )
    return make_learner(name, module, key, jnp.zeros((1, in_features), jnp.float32))


def linear_learner(
    key: jax.Array, in_features: int = 1, out_features: int = 1, *, name: str = "linear"
) -> Learner:
    """A linear base learner."""
    module = Linear(check_positive_int("out_features", out_features))
    return make_learner(
        name,
        module,
        key,
        jnp.zeros((1, check_positive_int("in_features", in_features)), jnp.float32),
    )


class TaskBatchNorm(nn.Module):
    """Batch norm that always normalises with the statistics of the batch it is given.

    Inside an inner loop the batch is one task's support (or query) set, as in the
    reference MAML, so no running averages exist to carry across tasks; the learned scale
    and bias are ordinary parameters that adapt like any other. With ``relu_pool`` it
    returns ``max_pool2x2(relu(norm(x)))``, computed pool-first by ``ops.norm_relu_pool``
    (the same values, a quarter of the full-resolution work).
    """

    epsilon: float = 1e-5
    relu_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        if self.relu_pool:
            return ops.norm_relu_pool(x, scale, bias, self.epsilon)
        multiplier, offset = ops.batch_affine(x, scale, bias, self.epsilon)
        return x * multiplier + offset


class Conv3x3(nn.Module):
    """A 3x3 convolution (SAME padding, stride 1 or 2), as ``nn.Conv(features, (3, 3), strides)``.

    ``conv="xla"`` is ``lax.conv``, the plain reference; ``conv="im2col"`` is ``ops.conv3x3``
    (one matmul with hand-written VJPs), the fast path on CPU, where ``vmap`` over per-task
    weights turns ``lax.conv`` into a slow grouped convolution. Same parameters and outputs.
    """

    features: int
    stride: int = 1
    conv: str = "im2col"
    keep_patches: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.conv == "xla":
            out = ops.lax_conv3x3(x, kernel, self.stride)
        else:
            out = ops.conv3x3(x, kernel, self.stride, keep_patches=self.keep_patches)
        return out + bias.reshape((1, 1, 1, -1))


def _conv3x3_params(in_features: int, features: int) -> Callable:
    """Initialiser of ``Conv3x3``'s parameters as one dict (same names, shapes and initialisers)."""

    def init(key):
        return {
            "kernel": nn.initializers.lecun_normal()(key, (3, 3, in_features, features)),
            "bias": jnp.zeros((features,)),
        }

    return init


class Conv4(nn.Module):
    """The conv4 of MAML and prototypical networks: four conv -> norm -> ReLU -> pool blocks.

    Each block is a 3x3 convolution (``filters`` channels), batch norm with the batch's own
    statistics, ReLU and 2x2 max-pooling; with ``strided``, a stride-2 convolution, norm and
    ReLU, and a final spatial mean instead of pooling (MAML's Omniglot network). Then a
    linear ``head`` with ``ways`` outputs, or with ``ways=0`` the flattened embedding
    (prototypical networks).

    ``conv`` is the one choice of how convolutions are computed: ``"xla"`` (``lax.conv``,
    the plain reference) or ``"im2col"`` (``jmeta.ops``, the fast path on CPU, whose first
    block for grey or RGB input is fused into ``ops.conv_norm_relu_pool``). Parameter trees
    and outputs are the same either way, and so with ``keep_patches`` (see ``ops.conv3x3``).
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
                x = self._first_block(x)
            elif self.strided:
                x = Conv3x3(self.filters, 2, self.conv, self.keep_patches, name=f"conv_{block}")(x)
                x = nn.relu(TaskBatchNorm(name=f"norm_{block}")(x))
            else:
                x = Conv3x3(self.filters, 1, self.conv, self.keep_patches, name=f"conv_{block}")(x)
                x = TaskBatchNorm(relu_pool=True, name=f"norm_{block}")(x)  # norm, ReLU, pool
        # Strided blocks leave 2x2 maps at 28x28 input; like MAML's Omniglot network they are
        # averaged, so both variants embed into ``filters`` features.
        x = jnp.mean(x, axis=(1, 2)) if self.strided else x.reshape((x.shape[0], -1))
        return nn.Dense(self.ways, name="head")(x) if self.ways else x

    def _first_block(self, x: jax.Array) -> jax.Array:
        """Block 0 on grey or RGB input: the parameter tree of the other blocks, held as plain
        params so that the im2col path can fuse the whole block (``ops.conv_norm_relu_pool``)."""
        conv = self.param("conv_0", _conv3x3_params(x.shape[-1], self.filters))
        norm = self.param(
            "norm_0",
            lambda _: {"scale": jnp.ones((self.filters,)), "bias": jnp.zeros((self.filters,))},
        )
        if self.conv == "xla":
            x = ops.lax_conv3x3(x, conv["kernel"]) + conv["bias"].reshape((1, 1, 1, -1))
            return ops.norm_relu_pool(x, norm["scale"], norm["bias"])
        return ops.conv_norm_relu_pool(
            x,
            conv["kernel"],
            conv["bias"],
            norm["scale"],
            norm["bias"],
            keep_patches=self.keep_patches,
        )


def conv4_learner(
    key: jax.Array,
    image_shape: Sequence[int] = (28, 28, 1),
    ways: int = 5,
    filters: int = 64,
    *,
    strided: bool = False,
    conv: str = "im2col",
    keep_patches: bool | None = None,
    name: str = "conv4",
) -> Learner:
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
        raise ValueError(
            f"conv4 with max-pooling halves the image four times and needs at least 16x16 images, "
            f"got image_shape {tuple(image_shape)}; use strided=True or larger images"
        )
    module = Conv4(ways, check_positive_int("filters", filters), strided, conv, keep_patches)
    return make_learner(name, module, key, jnp.zeros((2, *image_shape), jnp.float32))


def with_linear_head(embedding: Learner, sample_x: jax.Array, ways: int) -> Learner:
    """``embedding`` followed by a linear ``head`` of ``ways`` outputs, for the MAML family.

    The params are ``{"body": embedding.params, "head": {"kernel", "bias"}}``, so the body
    alone still embeds (``embedding.apply_fn(params["body"], x)``) and ANIL's
    ``adapt="head"`` finds the head. The kernel starts at zero, as MAML's output layer
    starts indifferent to the classes.
    """
    ways = check_positive_int("ways", ways)
    features = jax.eval_shape(embedding.apply_fn, embedding.params, sample_x).shape[-1]
    params = {
        "body": embedding.params,
        "head": {"kernel": jnp.zeros((features, ways)), "bias": jnp.zeros((ways,))},
    }

    def apply_fn(p, x):
        return embedding.apply_fn(p["body"], x) @ p["head"]["kernel"] + p["head"]["bias"][None, :]

    return Learner(f"{embedding.name}+head", apply_fn, params, input_shape=embedding.input_shape)


COMPUTE_DTYPES = ("float32", "bfloat16")


def computing_in(learner: Learner, dtype: str) -> Learner:
    """``learner`` whose forward pass runs in ``dtype`` (``"bfloat16"``): its params and
    inputs are cast on the way in and its outputs back to float32 on the way out, so the
    weights it is given (meta-parameters and adapted ones), their gradients and the loss
    stay float32. ``"float32"`` returns ``learner`` unchanged.

    The fast weights stay float32 on purpose: an inner update ``lr * grad`` is often below
    half a bfloat16 ulp of the weight it updates (13% of them on sinusoid MAML), so weights
    stored in bfloat16 barely adapt (held-out MSE 2.06 against 0.84 in float32; casting
    only inside the forward pass gave 0.82).
    """
    if dtype == "float32":
        return learner
    compute = jnp.dtype(dtype)

    def cast(leaf):
        return leaf.astype(compute) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    def apply_fn(params, x):
        outputs = learner.apply_fn(jax.tree_util.tree_map(cast, params), cast(jnp.asarray(x)))
        return outputs.astype(jnp.float32)

    return learner._replace(apply_fn=apply_fn)
