"""Base learners: Flax modules split once into ``(apply_fn, params)`` at the edge.

The core never holds a Module; it sees ``apply_fn(params, x)`` and a params pytree. A
``Learner`` also says which parameters adapt in the inner loop (ANIL adapts only the head).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmeta.validation import check_positive_int

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


class TaskBatchNorm(nn.Module):
    """Batch norm that always normalises with the statistics of the batch it is given.

    Inside an inner loop the batch is one task's support (or query) set, as in the
    reference MAML, so no running averages exist to carry across tasks; the learned scale
    and bias are ordinary parameters that adapt like any other.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        shape = (1,) * (x.ndim - 1) + (-1,)
        return (x - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale.reshape(shape) + bias.reshape(shape)


class Conv3x3(nn.Module):
    """A 3x3 convolution (SAME padding, stride 1 or 2) written as nine shifted matmuls.

    Same parameters and outputs as ``nn.Conv(features, (3, 3), strides, padding="SAME")``.
    Under ``vmap`` over tasks with per-task weights (MAML's inner loop) XLA:CPU turns
    ``lax.conv`` into a grouped convolution that is very slow: the gradient of one 64->64
    layer for 32 tasks of 80 14x14 images took 99.6 s that way and 2.8 s as matmuls.
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        height, width = x.shape[-3], x.shape[-2]
        out_height, out_width = -(-height // self.stride), -(-width // self.stride)
        pad_height = max((out_height - 1) * self.stride + 3 - height, 0)
        pad_width = max((out_width - 1) * self.stride + 3 - width, 0)
        padded = jnp.pad(x, ((0, 0), (pad_height // 2, pad_height - pad_height // 2),
                             (pad_width // 2, pad_width - pad_width // 2), (0, 0)))
        out = 0.0
        for i in range(3):
            for j in range(3):
                window = padded[:, i:i + (out_height - 1) * self.stride + 1:self.stride,
                                j:j + (out_width - 1) * self.stride + 1:self.stride, :]
                out = out + window @ kernel[i, j]
        return out + bias.reshape((1, 1, 1, -1))


class Conv4(nn.Module):
    """The conv4 of MAML and prototypical networks.

    Four blocks of 3x3 convolution (``filters`` channels), batch norm with batch
    statistics, ReLU and 2x2 max-pooling — or, with ``strided``, stride-2 convolutions
    and a final spatial mean instead of pooling, as MAML's Omniglot network (on XLA:CPU
    the max-pool gradient makes the pooled form about 5x slower to train). Then a linear ``head`` with ``ways``
    outputs, or with ``ways=0`` the flattened embedding (prototypical networks).
    """

    ways: int = 5
    filters: int = 64
    strided: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for block in range(4):
            x = Conv3x3(self.filters, 2 if self.strided else 1, name=f"conv_{block}")(x)
            x = nn.relu(TaskBatchNorm(name=f"norm_{block}")(x))
            if not self.strided:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        # Strided blocks leave 2x2 maps at 28x28 input; like MAML's Omniglot network they are
        # averaged, so both variants embed into ``filters`` features.
        x = jnp.mean(x, axis=(1, 2)) if self.strided else x.reshape((x.shape[0], -1))
        return nn.Dense(self.ways, name="head")(x) if self.ways else x


def conv4_learner(key: jax.Array, image_shape: Sequence[int] = (28, 28, 1), ways: int = 5, filters: int = 64,
                  *, strided: bool = False, adapt: str = "all", name: str = "conv4") -> Learner:
    """Conv4 as a base learner; ``ways=0`` gives the embedding network of prototypical networks."""
    if ways != 0:
        check_positive_int("ways", ways)
    if not strided and min(image_shape[:2]) < 16:
        raise ValueError(f"conv4 with max-pooling halves the image four times and needs at least 16x16 images, "
                         f"got image_shape {tuple(image_shape)}; use strided=True or larger images")
    module = Conv4(ways, check_positive_int("filters", filters), strided)
    return make_learner(name, module, key, jnp.zeros((2, *image_shape), jnp.float32), adapt=adapt)
