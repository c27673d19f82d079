"""Linear regression tasks ``y = a x + b``: a family that a linear base learner suits."""

from __future__ import annotations

import jax

from jmeta.tasks.base import Batch, Task, TaskSampler
from jmeta.validation import check_positive_int


def make_linear_sampler(
    shots: int,
    queries: int,
    slope: tuple[float, float] = (-3.0, 3.0),
    intercept: tuple[float, float] = (-3.0, 3.0),
    x_range: tuple[float, float] = (-5.0, 5.0),
    noise: float = 0.0,
) -> TaskSampler:
    """Returns ``sample(key) -> Task`` of a random line, ``x`` and ``y`` shaped ``(n, 1)``."""
    shots = check_positive_int("shots", shots)
    queries = check_positive_int("queries", queries)

    def sample(key: jax.Array) -> Task:
        slope_key, intercept_key, x_key, noise_key = jax.random.split(key, 4)
        a = jax.random.uniform(slope_key, (), minval=slope[0], maxval=slope[1])
        b = jax.random.uniform(intercept_key, (), minval=intercept[0], maxval=intercept[1])
        x = jax.random.uniform(x_key, (shots + queries, 1), minval=x_range[0], maxval=x_range[1])
        y = a * x + b + noise * jax.random.normal(noise_key, x.shape)
        return Task(support=Batch(x[:shots], y[:shots]), query=Batch(x[shots:], y[shots:]))

    return sample
