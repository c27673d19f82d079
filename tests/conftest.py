"""Rank promotion raises in every test: a (K,) target against (K, 1) predictions would
otherwise broadcast silently to (K, K) and give a wrong loss that still trains.

Every compiled executable keeps a few memory mappings until JAX's caches are cleared (about
3 per jitted function, 11 per line of eager code with a new shape, measured here), and
Linux allows 65,530 per process (``vm.max_map_count``): the whole suite in one process ran
past that and XLA segfaulted while compiling (one module alone, ``test_unsupervised.py``,
reached 35,626). The caches are cleared after any test that leaves more than 20,000.

Dtype promotion stays at JAX's standard setting: strict mode rejects optax's own Adam
bias correction (a Python float raised to an int32 step count), so it cannot be on
around the outer step.
"""

import gc
import os

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


# The longest test files (seconds on one of the 2 cores, measured 2026-12-02), started first:
# xdist's loadfile hands files to whichever worker is free in collection order, and with
# these last (as the alphabet puts most of them) one worker ran alone for minutes at the end.
LONGEST_FILES = {
    "test_unsupervised_meta.py": 330,
    "test_sharding.py": 270,
    "test_experiment_unsupervised_fewshot.py": 200,
    "test_runs.py": 200,
    "test_unsupervised.py": 160,
    "test_experiment_omniglot.py": 150,
    "test_processes.py": 95,
    "test_mixed_precision.py": 120,
}


def pytest_collection_modifyitems(items):
    """Runs the longest files first (a stable sort: the order inside a file is kept)."""
    items.sort(key=lambda item: -LONGEST_FILES.get(item.path.name, 0))


MAPS = "/proc/self/maps"
MAX_MAPPINGS = 20_000


@pytest.fixture(autouse=True)
def _release_compiled_code():
    """Frees the compiled executables (and their memory mappings) once they pile up."""
    yield
    if os.path.exists(MAPS):
        with open(MAPS) as maps:
            if sum(1 for _ in maps) > MAX_MAPPINGS:
                jax.clear_caches()
                gc.collect()


@pytest.fixture
def x64():
    """Runs a test in float64 (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
