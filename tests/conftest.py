"""Strict promotion catches support/query broadcasting mistakes (a (K,) target against (K, 1)
predictions would silently broadcast to (K, K) otherwise)."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
    """Runs a test in float64 (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
