"""Sinusoid regression (Finn et al. 2017, section 5.1).

Each task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5.0]``, ``phase ~ U[0, pi]`` and
inputs ``x ~ U[-5, 5]``; support and query points come from the same sine.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jmeta.tasks.base import Batch, Task, TaskSampler
from jmeta.validation import check_positive_int


class SinusoidFamily(NamedTuple):
    """The ranges of the task distribution; the defaults are the MAML paper's."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)


def _draw_sine(key: jax.Array, family: SinusoidFamily) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Amplitude and phase of the task drawn from ``key``, and the key left for its inputs."""
    amplitude_key, phase_key, x_key = jax.random.split(key, 3)
    amplitude = jax.random.uniform(
        amplitude_key, (), minval=family.amplitude[0], maxval=family.amplitude[1]
    )
    phase = jax.random.uniform(phase_key, (), minval=family.phase[0], maxval=family.phase[1])
    return amplitude, phase, x_key


def make_sinusoid_sampler(
    shots: int, queries: int, family: SinusoidFamily = SinusoidFamily()
) -> TaskSampler:
    """Returns ``sample(key) -> Task`` with ``shots`` support and ``queries`` query points.

    ``x`` has shape ``(n, 1)`` and ``y`` shape ``(n, 1)``. The sampler is pure and jittable;
    ``jmeta.tasks.sample_tasks`` vmaps it into a meta-batch.
    """
    shots = check_positive_int("shots", shots)
    queries = check_positive_int("queries", queries)

    def sample(key: jax.Array) -> Task:
        amplitude, phase, x_key = _draw_sine(key, family)
        x = jax.random.uniform(
            x_key, (shots + queries, 1), minval=family.x_range[0], maxval=family.x_range[1]
        )
        y = amplitude * jnp.sin(x - phase)
        return Task(support=Batch(x[:shots], y[:shots]), query=Batch(x[shots:], y[shots:]))

    return sample


def sinusoid_curve(
    key: jax.Array, x: jax.Array, family: SinusoidFamily = SinusoidFamily()
) -> jax.Array:
    """The true sine of the task that ``make_sinusoid_sampler`` draws from ``key``, at ``x``.

    Used to plot adapted predictions against the ground truth.
    """
    amplitude, phase, _ = _draw_sine(key, family)
    return amplitude * jnp.sin(x - phase)
