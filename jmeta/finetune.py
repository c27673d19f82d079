"""The fine-tuning baseline (Chen et al. 2019; Tian et al. 2020): pretrain the network on all
training classes with plain cross-entropy, then fit a new linear head on each task's support
embeddings.

It is written as a ``MetaLearner`` so that it trains with ``jmeta.train`` and scores with
``jmeta.evaluate`` like every method it is compared with. Its ``meta_grad`` is the gradient
of ordinary classification: the embedding followed by a linear classifier over
``num_classes`` classes, on batches of examples labelled with their class
(``jmeta.tasks.make_batch_sampler``; support and query are two such batches). Its
``adapt`` is the few-shot step: the classifier is dropped, the support embeddings are
L2-normalised (Tian et al.: it helps every linear probe they tried) and a ``ways``-way
multinomial logistic regression with weight decay is fitted to them by ``head_steps``
full-batch gradient steps from zero (Chen et al. fit theirs by 100 SGD steps; Tian et
al. call scikit-learn's logistic regression). On unit-norm features the loss's curvature
is at most 1/2, so a rate of 1 is stable.

``evaluate`` returns one column, the query metrics after the head is fitted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmeta.execution import CPU, Execution
from jmeta.losses import cross_entropy
from jmeta.models import Learner, computing_in, with_linear_head
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
from jmeta.tasks.base import Batch, Task
from jmeta.validation import check_non_negative_float, check_positive_float, check_positive_int


def unit_rows(embeddings: jax.Array) -> jax.Array:
    """Each row scaled to unit Euclidean norm (a zero row stays zero)."""
    return embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)


def fit_linear_head(
    features: jax.Array,
    labels: jax.Array,
    ways: int,
    *,
    steps: int = 100,
    learning_rate: float = 1.0,
    weight_decay: float = 1e-3,
) -> dict:
    """Multinomial logistic regression ``{"kernel": (d, ways), "bias": (ways,)}`` fitted to
    ``features`` by ``steps`` full-batch gradient steps from zero on the mean cross-entropy
    plus ``weight_decay / 2 |kernel|^2``."""

    def loss(head):
        logits = features @ head["kernel"] + head["bias"][None, :]
        return cross_entropy(logits, labels) + 0.5 * weight_decay * jnp.sum(head["kernel"] ** 2)

    def step(_, head):
        grads = jax.grad(loss)(head)
        return jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, head, grads)

    start = {
        "kernel": jnp.zeros((features.shape[-1], ways), features.dtype),
        "bias": jnp.zeros((ways,), features.dtype),
    }
    return jax.lax.fori_loop(0, steps, step, start)


def make_finetune(
    embedding: Learner,
    ways: int,
    num_classes: int,
    *,
    head_steps: int = 100,
    head_lr: float = 1.0,
    weight_decay: float = 1e-3,
    execution: Execution = CPU,
    compute_dtype: str = "float32",
) -> MetaLearner:
    """The fine-tuning baseline over ``embedding`` (e.g. ``conv4_learner(key, ways=0)``).

    Args:
      embedding: the network to pretrain; its output is the embedding.
      ways: the classes of the few-shot tasks it is scored on.
      num_classes: the classes of pretraining (with rotations, four per character).
      head_steps, head_lr, weight_decay: how each task's linear head is fitted.
      execution, compute_dtype: as for ``make_protonet``.

    Its meta-parameters are ``{"body": embedding params, "head": the pretraining
    classifier}`` (``jmeta.with_linear_head``); a model pretrained once serves any ``ways``.
    """
    ways = check_positive_int("ways", ways)
    num_classes = check_positive_int("num_classes", num_classes)
    head_steps = check_positive_int("head_steps", head_steps)
    head_lr = check_positive_float("head_lr", head_lr)
    weight_decay = check_non_negative_float("weight_decay", weight_decay)
    if embedding.input_shape is None:
        raise ValueError(
            f"embedding {embedding.name!r} has no input_shape; build it with jmeta.make_learner"
        )
    config = MetaLearnerConfig(loss="ce", compute_dtype=compute_dtype)
    classifier = with_linear_head(embedding, jnp.zeros((1, *embedding.input_shape)), num_classes)
    check_batches = make_task_check((classifier,), "ce")  # pretraining: labels < num_classes
    check_tasks = make_task_check((embedding,), "ce", classes=ways)  # few-shot tasks
    classifier = computing_in(classifier, compute_dtype)
    embedding = computing_in(embedding, compute_dtype)

    def init() -> MetaParams:
        return network_meta_params(classifier.params)

    def embed(meta_params: MetaParams, x: jax.Array) -> jax.Array:
        return unit_rows(embedding.apply_fn(meta_params.learners[0]["body"], x))

    def adapt(meta_params, support: Batch, num_steps=None):
        features = embed(meta_params, support.x)
        head = fit_linear_head(
            features,
            support.y,
            ways,
            steps=head_steps,
            learning_rate=head_lr,
            weight_decay=weight_decay,
        )
        return head, {}

    def predict(meta_params, head, x):
        return embed(meta_params, x) @ head["kernel"] + head["bias"][None, :]

    def task_loss(meta_params, task: Task, progress=None):
        # Pretraining: both batches of the "task" through the all-class classifier.
        check_batches(task, batched=False)
        x = jnp.concatenate([task.support.x, task.query.x])
        y = jnp.concatenate([task.support.y, task.query.y])
        logits = classifier.apply_fn(meta_params.learners[0], x)
        loss = cross_entropy(logits, y)
        return loss, {"post/loss": loss, "post/accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    def meta_loss(meta_params, tasks: Task, progress=None):
        check_batches(tasks)
        losses, metrics = over_tasks(task_loss, execution.task_chunk)(meta_params, tasks)
        return losses.mean(), jax.tree_util.tree_map(jnp.mean, metrics)

    meta_grad = mean_task_grad(task_loss, meta_loss, execution.task_chunk, check_batches)

    def few_shot(meta_params, task: Task):
        logits = predict(meta_params, adapt(meta_params, task.support)[0], task.query.x)
        return {
            "loss": cross_entropy(logits, task.query.y)[None],
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == task.query.y)[None],
        }

    def evaluate(meta_params, tasks: Task, num_steps: int = 0):
        check_tasks(tasks)
        return over_tasks(few_shot, execution.task_chunk)(meta_params, tasks)

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
        check_batches,
    )
