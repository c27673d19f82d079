"""Host-side checks for the unsupervised functions: a bad argument fails here, with its
name, its value and what was expected, before anything is traced or compiled.

Arrays that are already tracers (a caller's own ``jit``) pass the shape checks only: their
values cannot be looked at without a host round trip.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.validation import check_positive_int


def float_dtype() -> np.dtype:
    """float32, or float64 when JAX's x64 mode is on."""
    return np.dtype(jnp.result_type(float))


def check_data(name: str, x: Any, dtype: Any = None) -> jax.Array:
    """``x`` as a non-empty, finite 2-D float array on the device."""
    if isinstance(x, jax.core.Tracer):
        array = x.astype(dtype or float_dtype())
    else:
        values = np.asarray(x) if not isinstance(x, jax.Array) else x
        if values.dtype.kind == "c":
            raise ValueError(f"{name} must be real-valued, got complex dtype {values.dtype}")
        if values.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric, got dtype {values.dtype}")
        array = None
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must hold at least one sample and one feature, got shape {shape}")
    if array is None:
        array = jnp.asarray(x, dtype=dtype or float_dtype())
        finite = bool(jnp.all(jnp.isfinite(array)))
        if not finite:
            bad = int(jnp.size(array) - jnp.count_nonzero(jnp.isfinite(array)))
            raise ValueError(
                f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the data first"
            )
    return array


def check_num_clusters(num_clusters: Any, num_samples: int, name: str = "num_clusters") -> int:
    """``num_clusters`` as an int in ``[1, num_samples]``."""
    num_clusters = check_positive_int(name, num_clusters)
    if num_clusters > num_samples:
        raise ValueError(
            f"{name}={num_clusters} is larger than the number of samples, {num_samples}; "
            f"expected at most {num_samples}"
        )
    return num_clusters


def as_sample_weight(sample_weight: Any, num_samples: int, dtype: Any) -> jax.Array:
    """Weights ``(n,)`` on the device: all ones by default (see ``check_sample_weight``)."""
    if sample_weight is None:
        return jnp.ones(num_samples, dtype)
    if isinstance(sample_weight, jax.core.Tracer):
        return sample_weight.astype(dtype)
    return jnp.asarray(check_sample_weight(sample_weight, num_samples), dtype)


def check_sample_weight(sample_weight: Any, num_samples: int) -> np.ndarray:
    """Weights ``(n,)`` on the host in float64: all ones by default; refused if negative,
    non-finite, all zero or of the wrong shape."""
    if sample_weight is None:
        return np.ones(num_samples)
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (num_samples,):
        raise ValueError(
            f"sample_weight must have shape ({num_samples},), one weight per sample, "
            f"got shape {weights.shape}"
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("sample_weight contains NaN or inf; expected finite non-negative weights")
    if np.any(weights < 0):
        raise ValueError(f"sample_weight must be non-negative, got a minimum of {weights.min()!r}")
    if not np.any(weights > 0):
        raise ValueError("sample_weight must have at least one positive weight, got all zeros")
    return weights


def check_key(key: Any) -> jax.Array:
    """A JAX PRNG key; an int seed is turned into ``jax.random.key(seed)``."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise ValueError(
        f"key must be a JAX PRNG key (jax.random.key(seed)) or an int seed, got {key!r}"
    )
