"""The benchmark harness the ``bench-*`` experiments share.

A benchmark is a config and its workloads; this module does the rest the same way for all
of them: the record of the machine and device, timed rounds in which the rows take turns
(this project's VMs drift by 10-30% over minutes, and alternating makes the drift hit every
row alike), the seconds of tracing and lowering apart from XLA's compile, XLA's FLOP count
and ``memory_analysis()`` of a compiled program, and one atomic writer of the JSON and the
markdown table.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.checkpoint import atomic_write_json, atomic_write_text
from jmeta.runs import RunDir


def machine_record() -> dict:
    """Where a benchmark ran: platform, processor, cores, jax version, backend and devices."""
    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "devices": [str(d) for d in devices],
    }


_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counting_compiles():
    """Counts the jit traces and XLA compiles inside the ``with`` block, through JAX's public
    ``jax.monitoring`` events: ``with counting_compiles() as counts: ...`` then
    ``counts["traces"]`` and ``counts["compiles"]`` (a call served from a cache adds neither)."""
    counts = {"traces": 0, "compiles": 0}

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _TRACE_EVENT:
            counts["traces"] += 1
        elif event == _COMPILE_EVENT:
            counts["compiles"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def timed(call: Callable[[], Any], min_seconds: float) -> tuple[float, int]:
    """Seconds per call of ``call()`` (which must block until its result is ready), calling it
    until ``min_seconds`` have passed; returns ``(seconds per call, calls)``."""
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls, calls


def alternating(
    calls: dict[str, Callable[[], None]], min_seconds: float, min_calls: int = 3
) -> dict[str, list[float]]:
    """Times each call in rounds, the calls taking turns; returns every timing of each.

    Each call runs once untimed first. A round then runs, once each, the calls that still
    lack ``min_calls`` timings or ``min_seconds`` in all; a call that has both drops out, so a
    fast row's many rounds do not repeat a slow one (on an H200 jmeta's 15 ms step against
    the PyTorch loop's 2 s would otherwise run the loop for minutes).
    """
    for call in calls.values():
        call()
    seconds = {name: [] for name in calls}

    def wanting(name: str) -> bool:
        return len(seconds[name]) < min_calls or sum(seconds[name]) < min_seconds

    while pending := [name for name in calls if wanting(name)]:
        for name in pending:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def best_of_rounds(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Each call's fastest time over ``rounds``, the calls taking turns within every round."""
    best = {name: np.inf for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def step_summary(seconds: list[float], tasks_per_step: int) -> dict:
    """The median step of a row's timings, as seconds, meta-steps/s and tasks/s."""
    median = statistics.median(seconds)
    return {
        "seconds_per_step": median,
        "meta_steps_per_second": 1 / median,
        "tasks_per_second": tasks_per_step / median,
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "timed_steps": len(seconds),
    }


def compile_timed(jitted, *args, **static) -> tuple[Any, dict]:
    """``jitted`` lowered and compiled for ``args``, and how long each part took.

    Returns ``(compiled, {"trace_lower_seconds", "xla_compile_seconds", "compile_seconds"})``:
    tracing and lowering to StableHLO are JAX's (Python) work, the compile is XLA's, and
    ``compile_seconds`` is their sum.
    """
    start = time.perf_counter()
    lowered = jitted.lower(*args, **static)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    return compiled, {
        "trace_lower_seconds": lowered_at - start,
        "xla_compile_seconds": done - lowered_at,
        "compile_seconds": done - start,
    }


def memory_record(compiled) -> dict | None:
    """XLA's buffer assignment for a compiled program (exact, unlike a sampled resident set):
    temporary, argument, output and total bytes; ``None`` where the backend gives none."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - a backend without the analysis reports none
        return None
    if analysis is None:
        return None
    return {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "total_bytes": int(
            analysis.temp_size_in_bytes
            + analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes
        ),
    }


def xla_flops(jitted, *shapes) -> float:
    """XLA's FLOP count of ``jitted`` for arguments of ``shapes`` (pytrees of
    ``ShapeDtypeStruct``), lowered for the CPU whatever the backend: XLA:GPU's cost analysis
    gives none, and the count is the program's, not the device's. A loop's body is counted
    once, not once per iteration. ``nan`` where no CPU is visible."""
    try:
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    except RuntimeError:  # JAX_PLATFORMS without "cpu"
        return float("nan")
    # Arguments placed on the CPU make the CPU the lowering's backend.
    placed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), shapes)
    cost = jitted.trace(*placed).lower().cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan")))


def matmul_peak(size: int, seconds: float = 1.0, dtype: str = "float32") -> float:
    """FLOP/s of a ``size x size`` matmul in ``dtype`` on the default device: the yardstick
    for the fraction of peak a workload reaches."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(matmul(a))
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start)


def write_results(run: RunDir, name: str, results: dict, table: str) -> None:
    """``NAME.json`` and ``NAME.md`` in the run directory, each written atomically."""
    atomic_write_json(run.file(f"{name}.json"), results)
    atomic_write_text(run.file(f"{name}.md"), table)
