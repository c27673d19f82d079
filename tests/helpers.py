"""Small fixtures shared by the tests."""

import jax
import jax.numpy as jnp

import jmeta


def sinusoid_tasks(seed=0, num_tasks=4, shots=5, queries=7, dtype=jnp.float32):
    tasks = jmeta.sample_tasks(
        jmeta.make_sinusoid_sampler(shots, queries), jax.random.key(seed), num_tasks
    )
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), tasks)


def small_mlp(seed=0, hidden=(8, 8), dtype=jnp.float32, **kwargs):
    """A small MLP whose biases are random too.

    Flax initialises biases to zero; then a hidden unit fed only by dead ReLUs sits exactly
    on the kink at 0, where finite differences average two one-sided slopes and disagree
    with the (correct, one-sided) autodiff gradient. Random biases keep every check smooth.
    """
    learner = jmeta.mlp_learner(jax.random.key(seed), hidden=hidden, **kwargs)
    leaves, treedef = jax.tree_util.tree_flatten(learner.params)
    keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
    leaves = [
        (p + 0.1 * jax.random.normal(k, p.shape, p.dtype)).astype(dtype)
        for p, k in zip(leaves, keys)
    ]
    return learner._replace(params=jax.tree_util.tree_unflatten(treedef, leaves))


def assert_refused_before_work(tmp_path, monkeypatch, experiment, field, message, work):
    """``jmeta run EXPERIMENT field`` fails with ``message`` before ``work`` (a name in the
    experiment's module) is called: a bad field is named before any data is read or trained."""
    import pytest

    from jmeta.cli import load_experiment, run_experiment

    if work is not None:
        monkeypatch.setattr(
            load_experiment(experiment), work, lambda *a, **k: pytest.fail("worked before checking")
        )
    with pytest.raises(ValueError, match=message):
        run_experiment(experiment, str(tmp_path / "run"), [field], progress=False)
