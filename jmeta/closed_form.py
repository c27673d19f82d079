"""Meta-learners whose inner loop has a closed form: an embedding and a head fitted to each
support set in one shot.

A ``Head`` says how: ``fit`` turns the support embeddings and labels into what a task
learned (class prototypes, the support set itself, ridge-regression weights) and
``logits`` scores query embeddings against it. ``make_closed_form`` builds the
``MetaLearner`` around one: it trains with the same ``make_meta_step`` and scores with the
same ``evaluate`` as MAML, and ``evaluate`` returns one column (no inner steps).
Prototypical networks (``jmeta.protonet``), matching networks (``jmeta.matching``) and
R2D2's ridge head (``jmeta.ridge``) are three heads.

A head may have parameters of its own that the outer loop learns (a scale, a
regulariser). Then the meta-parameters of the learner are ``{"body": embedding params,
"head": head params}``; a head without any keeps the embedding's params as they are, the
layout prototypical networks always had.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmeta.execution import CPU, Execution
from jmeta.losses import cross_entropy
from jmeta.models import Learner, computing_in
from jmeta.objective import (
    MetaLearner,
    MetaLearnerConfig,
    MetaParams,
    mean_task_grad,
    network_meta_params,
    network_trainable,
    over_tasks,
)
from jmeta.task_checks import make_task_check
from jmeta.tasks.base import Task
from jmeta.validation import check_positive_int


class Head(NamedTuple):
    """A closed-form head.

    Attributes:
      name: a label.
      params: the head's own meta-parameters (a pytree), or ``None``.
      fit: ``(head_params, support_embeddings, support_labels, ways) -> fitted``.
      logits: ``(head_params, fitted, query_embeddings) -> (queries, ways)`` logits.
    """

    name: str
    params: Any
    fit: Callable
    logits: Callable


def make_closed_form(
    embedding: Learner,
    ways: int,
    head: Head,
    *,
    execution: Execution = CPU,
    compute_dtype: str = "float32",
) -> MetaLearner:
    """The meta-learner of ``head`` over ``embedding`` (e.g. ``conv4_learner(key, ways=0)``)
    for ``ways``-way tasks.

    ``execution`` schedules it as it does a gradient-based meta-learner (its
    ``task_chunk``: 0 vmaps over all tasks at once); ``compute_dtype="bfloat16"`` runs the
    embedding in bfloat16, its parameters and the head's arithmetic staying float32.
    """
    ways = check_positive_int("ways", ways)
    config = MetaLearnerConfig(loss="ce", compute_dtype=compute_dtype)
    check_tasks = make_task_check((embedding,), "ce", classes=ways)
    embedding = computing_in(embedding, compute_dtype)

    def split(params: Any) -> tuple[Any, Any]:
        return (params, None) if head.params is None else (params["body"], params["head"])

    def embed(meta_params: MetaParams, x: jax.Array) -> jax.Array:
        return embedding.apply_fn(split(meta_params.learners[0])[0], x)

    def init() -> MetaParams:
        params = embedding.params
        if head.params is not None:
            params = {"body": params, "head": head.params}
        return network_meta_params(params)

    def adapt(meta_params, support, num_steps=None):
        head_params = split(meta_params.learners[0])[1]
        return head.fit(head_params, embed(meta_params, support.x), support.y, ways), {}

    def predict(meta_params, fitted, x):
        return head.logits(split(meta_params.learners[0])[1], fitted, embed(meta_params, x))

    def task_loss(meta_params, task: Task, progress=None):
        check_tasks(task, batched=False)
        logits = predict(meta_params, adapt(meta_params, task.support)[0], task.query.x)
        loss = cross_entropy(logits, task.query.y)
        return loss, {
            "post/loss": loss,
            "post/accuracy": jnp.mean(jnp.argmax(logits, -1) == task.query.y),
        }

    def meta_loss(meta_params, tasks: Task, progress=None):
        check_tasks(tasks)
        losses, metrics = over_tasks(task_loss, execution.task_chunk)(meta_params, tasks)
        return losses.mean(), jax.tree_util.tree_map(jnp.mean, metrics)

    meta_grad = mean_task_grad(task_loss, meta_loss, execution.task_chunk, check_tasks)

    def evaluate(meta_params, tasks: Task, num_steps: int = 0):
        check_tasks(tasks)
        _, metrics = over_tasks(task_loss, execution.task_chunk)(meta_params, tasks)
        return {
            "loss": metrics["post/loss"][:, None],
            "accuracy": metrics["post/accuracy"][:, None],
        }

    return MetaLearner(
        config,
        execution,
        (embedding,),
        init,
        network_trainable,
        adapt,
        predict,
        task_loss,
        meta_loss,
        meta_grad,
        evaluate,
        check_tasks,
    )
