"""The N-way K-shot episode sampler: shapes, labels, class disjointness, rotations, groups,
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from jmeta.tasks import make_episode_sampler


def _class_coded_data(classes=12, examples=6, size=4):
    """Every pixel of an image holds its class index (and the example index in channel 1)."""
    data = np.zeros((classes, examples, size, size, 2), np.float32)
    data[..., 0] = np.arange(classes)[:, None, None, None]
    data[..., 1] = np.arange(examples)[None, :, None, None]
    return data


def test_shapes_labels_and_disjoint_classes_under_vmap():
    data = _class_coded_data()
    sampler = make_episode_sampler(data, ways=5, shots=2, queries=3)
    tasks = jax.jit(lambda key: jmeta.sample_tasks(sampler, key, 16))(jax.random.key(0))
    assert tasks.support.x.shape == (16, 10, 4, 4, 2) and tasks.query.x.shape == (16, 15, 4, 4, 2)
    assert tasks.support.y.dtype == jnp.int32
    for t in range(16):
        support_y, query_y = np.asarray(tasks.support.y[t]), np.asarray(tasks.query.y[t])
        assert sorted(set(support_y)) == list(range(5)) and np.all(np.bincount(support_y) == 2)
        assert np.all(np.bincount(query_y) == 3)
        # One original class per label, different classes for different labels, and a
        # label's support and query examples are different examples of the same class.
        support_class = np.asarray(tasks.support.x[t, :, 0, 0, 0])
        query_class = np.asarray(tasks.query.x[t, :, 0, 0, 0])
        mapping = {
            label: set(support_class[support_y == label]) | set(query_class[query_y == label])
            for label in range(5)
        }
        assert all(len(c) == 1 for c in mapping.values())
        assert len({c.pop() for c in mapping.values()}) == 5
        for label in range(5):
            used = np.concatenate(
                [
                    tasks.support.x[t, support_y == label, 0, 0, 1],
                    tasks.query.x[t, query_y == label, 0, 0, 1],
                ]
            )
            assert len(set(used.tolist())) == 5
    # Labels are relabelled at random: the same class does not always get the same label.
    first_labels = {
        int(tasks.support.x[t, 0, 0, 0, 0]): int(tasks.support.y[t, 0]) for t in range(16)
    }
    assert len(set(first_labels.values())) > 1


def test_rotations_add_rotated_classes():
    data = np.zeros((3, 4, 5, 5, 1), np.float32)
    data[:, :, 0, 0] = 1.0  # a mark in the top-left corner
    sampler = make_episode_sampler(data, ways=12, shots=1, queries=1, rotations=True)
    task = sampler(jax.random.key(1))
    corners = np.asarray(task.support.x[:, [0, 0, -1, -1], [0, -1, 0, -1], 0])
    assert corners.sum(axis=1).tolist() == [1.0] * 12  # each image rotated, mark kept
    assert len({tuple(c) for c in corners}) == 4  # all four rotations appear


def test_groups_keep_an_episode_within_one_group():
    data = _class_coded_data(classes=12)
    groups = np.repeat([0, 1, 2], [5, 4, 3])
    sampler = make_episode_sampler(data, ways=4, shots=1, queries=1, groups=groups)
    tasks = jmeta.sample_tasks(sampler, jax.random.key(2), 40)
    seen = set()
    for t in range(40):
        group = groups[np.asarray(tasks.support.x[t, :, 0, 0, 0]).astype(int)]
        assert len(set(group)) == 1
        seen.add(int(group[0]))
    assert seen == {0, 1}  # group 2 has only 3 classes, too few for 4 ways


def test_impossible_requests_fail_before_compiling():
    data = _class_coded_data(classes=4, examples=3)
    with pytest.raises(ValueError, match="ways = 5 but the data has only 4 classes"):
        make_episode_sampler(data, ways=5, shots=1, queries=1)
    with pytest.raises(
        ValueError, match="shots \\+ queries = 4 but each class has only 3 examples"
    ):
        make_episode_sampler(data, ways=2, shots=2, queries=2)
    with pytest.raises(ValueError, match="data is empty"):
        make_episode_sampler(np.zeros((0, 3, 4, 4, 1)), ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="ways must be a positive integer"):
        make_episode_sampler(data, ways=0, shots=1, queries=1)
    with pytest.raises(ValueError, match="data must have shape"):
        make_episode_sampler(np.zeros((4, 3, 4)), ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="any group has only 2 classes"):
        make_episode_sampler(data, ways=3, shots=1, queries=1, groups=[0, 0, 1, 1])
    make_episode_sampler(
        data, ways=16, shots=1, queries=1, rotations=True
    )  # 4 classes x 4 rotations
