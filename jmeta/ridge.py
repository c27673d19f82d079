"""R2D2 (Bertinetto et al. 2019): a ridge-regression head solved in closed form on each
task's support embeddings, differentiated through in the outer loop.

The head regresses one-hot labels on the support embeddings (with a column of ones for an
intercept): ``W = argmin |X W - Y|^2 + lambda |W|^2``. With ``n`` support examples of ``d``
features the solution has two forms, equal by the Woodbury identity:
``W = X^T (X X^T + lambda I_n)^-1 Y`` (an ``n x n`` system, the paper's, cheap when the
support is small) and ``W = (X^T X + lambda I_d)^-1 X^T Y`` (``d x d``, cheaper when it is
not, such as 60-way 5-shot training episodes on a 64-feature embedding). ``ridge_weights``
solves whichever is smaller; both are Cholesky solves of a positive definite matrix.
The query logits are ``scale * X_q W``; ``lambda`` and ``scale`` are meta-parameters, stored
as logarithms (R2D2 learns both; its offset is left out, since a constant added to every
logit does not change a softmax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve

from jmeta.closed_form import Head, make_closed_form
from jmeta.execution import CPU, Execution
from jmeta.models import Learner
from jmeta.objective import MetaLearner
from jmeta.validation import check_positive_float


def with_intercept(embeddings: jax.Array) -> jax.Array:
    """``embeddings`` with a column of ones appended: ``(n, d + 1)``."""
    return jnp.concatenate([embeddings, jnp.ones((embeddings.shape[0], 1), embeddings.dtype)], 1)


def ridge_weights(features: jax.Array, targets: jax.Array, regulariser: jax.Array) -> jax.Array:
    """``argmin_W |features W - targets|^2 + regulariser |W|^2``: ``(d, outputs)``, from the
    ``n x n`` (Woodbury) form when ``n <= d`` and the ``d x d`` form otherwise."""
    n, d = features.shape
    if n <= d:
        gram = features @ features.T + regulariser * jnp.eye(n, dtype=features.dtype)
        return features.T @ solve(gram, targets, assume_a="pos")
    gram = features.T @ features + regulariser * jnp.eye(d, dtype=features.dtype)
    return solve(gram, features.T @ targets, assume_a="pos")


def make_ridge_head(
    embedding: Learner,
    ways: int,
    *,
    regulariser: float = 1.0,
    scale: float = 10.0,
    execution: Execution = CPU,
    compute_dtype: str = "float32",
) -> MetaLearner:
    """R2D2 over ``embedding`` (e.g. ``conv4_learner(key, ways=0)``) for ``ways``-way tasks.
    ``regulariser`` (lambda) and ``scale`` are the initial values of the two learned
    scalars; its meta-parameters are ``{"body": embedding params, "head": {"log_lambda",
    "log_scale"}}``."""
    initial = {
        "log_lambda": jnp.log(check_positive_float("regulariser", regulariser)),
        "log_scale": jnp.log(check_positive_float("scale", scale)),
    }

    def fit(params, embeddings, labels, ways):
        targets = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)
        return ridge_weights(with_intercept(embeddings), targets, jnp.exp(params["log_lambda"]))

    def logits(params, weights, queries):
        return jnp.exp(params["log_scale"]) * (with_intercept(queries) @ weights)

    head = Head(
        "r2d2", jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), initial), fit, logits
    )
    return make_closed_form(embedding, ways, head, execution=execution, compute_dtype=compute_dtype)
