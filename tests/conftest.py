"""Rank promotion raises in every test: a (K,) target against (K, 1) predictions would
otherwise broadcast silently to (K, K) and give a wrong loss that still trains.

Dtype promotion stays at JAX's standard setting: strict mode rejects optax's own Adam
bias correction (a Python float raised to an int32 step count), so it cannot be on
around the outer step.
"""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Runs a test in float64 (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
