"""Batches of labelled examples from every class: the "tasks" of ordinary supervised
pretraining (the fine-tuning baseline, ``jmeta.finetune``).

Written as a ``key -> Task`` sampler so that pretraining runs through the same
``jmeta.train`` as meta-training (progress, checkpoints, exact resume): support and query
are two independent batches drawn with replacement, labelled with their class's index in
``data`` (with ``rotations``, the rotated copies of class ``c`` are ``c + k * classes``
for ``k`` quarter turns, the episode sampler's numbering).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.tasks.base import Batch, Task, TaskSampler
from jmeta.tasks.episodes import rotate
from jmeta.validation import check_positive_int


def make_batch_sampler(data: Any, batch: int, *, rotations: bool = False) -> TaskSampler:
    """Returns ``sample(key) -> Task`` of two batches of ``batch`` examples each.

    Args:
      data: class-indexed examples ``(classes, examples, H, W, C)``.
      batch: examples in the support batch and in the query batch.
      rotations: every class's three 90-degree rotations are three more classes.
    """
    batch = check_positive_int("batch", batch)
    shape = np.shape(data)
    if len(shape) != 5 or 0 in shape[:2]:
        raise ValueError(
            f"data must have shape (classes, examples, height, width, channels) with at least "
            f"one of each, got {shape}"
        )
    if rotations and shape[2] != shape[3]:
        raise ValueError(f"rotations need square images, got {shape[2]}x{shape[3]}")
    num_classes, num_examples = shape[:2]
    copies = 4 if rotations else 1
    data = jnp.asarray(data)

    def draw(key: jax.Array) -> Batch:
        class_key, example_key = jax.random.split(key)
        labels = jax.random.randint(class_key, (batch,), 0, num_classes * copies)
        examples = jax.random.randint(example_key, (batch,), 0, num_examples)
        images = data[labels % num_classes, examples]
        if rotations:
            images = jax.vmap(rotate)(images, labels // num_classes)
        return Batch(images, labels.astype(jnp.int32))

    def sample(key: jax.Array) -> Task:
        support_key, query_key = jax.random.split(key)
        return Task(draw(support_key), draw(query_key))

    return sample
