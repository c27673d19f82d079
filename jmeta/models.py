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
