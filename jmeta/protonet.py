"""Prototypical networks (Snell et al. 2017) as a meta-learner of the core.

Adaptation is closed-form: the "adapted parameters" of a task are its class prototypes,
the mean embedding of each class's support examples, and a query's logits are minus its
squared Euclidean distances to them. Written as a ``MetaLearner`` it trains with the same
``make_meta_step`` and scores with the same ``evaluate`` as MAML; ``evaluate`` returns one
column (no inner steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta.execution import CPU, Execution
from jmeta.losses import cross_entropy
from jmeta.models import Learner, computing_in
from jmeta.objective import MetaLearner, MetaLearnerConfig, MetaParams, mean_task_grad, over_tasks
from jmeta.task_checks import make_task_check
from jmeta.tasks.base import Task
from jmeta.validation import check_positive_int


def prototypes(embeddings: jax.Array, labels: jax.Array, ways: int) -> jax.Array:
    """Mean embedding of each class ``0..ways-1``: ``(ways, features)``."""
    one_hot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)
    return (one_hot.T @ embeddings) / jnp.sum(one_hot, axis=0)[:, None]


def prototype_logits(query_embeddings: jax.Array, class_prototypes: jax.Array) -> jax.Array:
    """Minus the squared Euclidean distance of each query to each prototype: ``(queries, ways)``."""
    differences = query_embeddings[:, None, :] - class_prototypes[None, :, :]
    return -jnp.sum(jnp.square(differences), axis=-1)


def make_protonet(
    embedding: Learner,
    ways: int,
    *,
    execution: Execution = CPU,
    compute_dtype: str = "float32",
) -> MetaLearner:
    """A prototypical network over ``embedding`` (e.g. ``conv4_learner(key, ways=0)``).

    ``execution`` schedules it as it does a gradient-based meta-learner (its
    ``task_chunk``: 0 vmaps over all tasks at once); ``compute_dtype="bfloat16"`` runs the
    embedding in bfloat16, its parameters and the distances staying float32.
    """
    ways = check_positive_int("ways", ways)
    config = MetaLearnerConfig(loss="ce", compute_dtype=compute_dtype)
    check_tasks = make_task_check((embedding,), "ce", classes=ways)
    embedding = computing_in(embedding, compute_dtype)

    def init() -> MetaParams:
        return MetaParams((embedding.params,), (jnp.zeros(()),), jnp.zeros((1,)))

    def trainable(meta_params):
        return MetaParams(
            jax.tree_util.tree_map(lambda _: True, meta_params.learners), (False,), False
        )

    def adapt(meta_params, support, num_steps=None):
        features = embedding.apply_fn(meta_params.learners[0], support.x)
        return prototypes(features, support.y, ways), {}

    def predict(meta_params, class_prototypes, x):
        return prototype_logits(embedding.apply_fn(meta_params.learners[0], x), class_prototypes)

    def task_loss(meta_params, task: Task):
        check_tasks(task, batched=False)
        logits = predict(meta_params, adapt(meta_params, task.support)[0], task.query.x)
        loss = cross_entropy(logits, task.query.y)
        return loss, {
            "post/loss": loss,
            "post/accuracy": jnp.mean(jnp.argmax(logits, -1) == task.query.y),
        }

    def meta_loss(meta_params, tasks: Task):
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
        trainable,
        adapt,
        predict,
        task_loss,
        meta_loss,
        meta_grad,
        evaluate,
        check_tasks,
    )
