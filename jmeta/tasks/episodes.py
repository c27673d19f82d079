"""N-way K-shot classification episodes, sampled on device from a class-indexed array.

``data`` has shape ``(classes, examples, height, width, channels)``. An episode draws
``ways`` classes, ``shots`` support and ``queries`` query examples of each, and relabels the
classes ``0..ways-1`` in a random order, so that labels carry no information across
episodes. With ``rotations`` every class also appears rotated by 90, 180 and 270 degrees
as three new classes (the MAML Omniglot protocol). With ``groups`` (say the alphabet of
each character) all the classes of an episode come from one group that has at least
``ways`` classes (Omniglot's within-alphabet episodes).

Impossible requests fail when the sampler is built, before anything is compiled.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.tasks.base import Batch, Task, TaskSampler
from jmeta.validation import check_positive_int


def rotate(image: jax.Array, quarter_turns: jax.Array) -> jax.Array:
    """``image`` (H, W, C) rotated by ``quarter_turns`` x 90 degrees (traced)."""
    return jax.lax.switch(
        quarter_turns, [lambda x, k=k: jnp.rot90(x, k, axes=(0, 1)) for k in range(4)], image
    )


def make_episode_sampler(
    data: Any, ways: int, shots: int, queries: int, *, rotations: bool = False, groups: Any = None
) -> TaskSampler:
    """Returns ``sample(key) -> Task`` of one N-way K-shot episode.

    Support ``x`` has shape ``(ways * shots, H, W, C)`` and ``y`` ``(ways * shots,)``
    (int32 labels), grouped by class; the query set likewise with ``queries``.

    Args:
      data: class-indexed examples ``(classes, examples, H, W, C)``.
      ways, shots, queries: classes per episode, support and query examples per class.
      rotations: add the three 90-degree rotations of every class as new classes.
      groups: optional ``(classes,)`` integer group of each class; episodes then draw all
        their classes from one group (rotated copies stay in their class's group).
    """
    ways = check_positive_int("ways", ways)
    shots = check_positive_int("shots", shots)
    queries = check_positive_int("queries", queries)
    shape = np.shape(data)
    if len(shape) != 5:
        raise ValueError(
            f"data must have shape (classes, examples, height, width, channels), got {shape}"
        )
    num_classes, num_examples = shape[0], shape[1]
    if num_classes == 0 or num_examples == 0:
        raise ValueError(f"data is empty: shape {shape}")
    if rotations and shape[2] != shape[3]:
        raise ValueError(f"rotations need square images, got {shape[2]}x{shape[3]}")
    copies = 4 if rotations else 1
    if shots + queries > num_examples:
        raise ValueError(
            f"shots + queries = {shots + queries} but each class has only {num_examples} examples"
        )
    if groups is None:
        group_of = np.zeros(num_classes, np.int32)
    else:
        group_of = np.asarray(groups)
        if group_of.shape != (num_classes,) or group_of.dtype.kind not in "iu":
            raise ValueError(
                f"groups must be {num_classes} integers (one per class), got shape "
                f"{group_of.shape} "
                f"and dtype {group_of.dtype}"
            )
    group_sizes = np.bincount(group_of) * copies
    if ways > group_sizes.max():
        where = "any group" if groups is not None else "the data"
        raise ValueError(
            f"ways = {ways} but {where} has only {group_sizes.max()} classes"
            f"{' (rotations included)' if rotations else ''}"
        )
    eligible = np.flatnonzero(group_sizes >= ways)
    data = jnp.asarray(data)
    class_group = jnp.asarray(np.tile(group_of, copies))
    eligible = jnp.asarray(eligible)

    def sample(key: jax.Array) -> Task:
        group_key, class_key, example_key, label_key = jax.random.split(key, 4)
        group = eligible[jax.random.randint(group_key, (), 0, eligible.shape[0])]
        in_group = (class_group == group).astype(jnp.float32)
        chosen = jax.random.choice(
            class_key, num_classes * copies, (ways,), replace=False, p=in_group / in_group.sum()
        )
        classes, turns = chosen % num_classes, chosen // num_classes
        example_keys = jax.random.split(example_key, ways)
        examples = jax.vmap(lambda k: jax.random.permutation(k, num_examples)[: shots + queries])(
            example_keys
        )
        images = data[classes[:, None], examples]  # (ways, shots + queries, H, W, C)
        if rotations:
            images = jax.vmap(
                lambda per_class, k: jax.vmap(lambda image: rotate(image, k))(per_class)
            )(images, turns)
        return episode_from_classes(label_key, images, shots)

    return sample


def episode_from_classes(key: jax.Array, examples: jax.Array, shots: int) -> Task:
    """The ``Task`` of ``examples`` ``(ways, shots + queries, ...)`` (one row per class): the
    first ``shots`` of each row support, the rest query, classes relabelled ``0..ways-1`` in
    the random order ``key`` draws (so that a label carries nothing across episodes)."""
    ways, per_class = examples.shape[:2]
    queries = per_class - shots
    labels = jax.random.permutation(key, ways).astype(jnp.int32)
    shape = examples.shape[2:]
    return Task(
        Batch(examples[:, :shots].reshape((ways * shots,) + shape), jnp.repeat(labels, shots)),
        Batch(examples[:, shots:].reshape((ways * queries,) + shape), jnp.repeat(labels, queries)),
    )
