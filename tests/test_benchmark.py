"""The benchmark harness (jmeta.benchmark): alternating rounds, compile split, XLA's figures."""

import jax
import jax.numpy as jnp
import pytest

from jmeta import benchmark


def test_alternating_rounds_stop_timing_a_slow_row_once_it_has_its_timings(monkeypatch):
    # On a GPU jmeta's step is 150x faster than the PyTorch loop: rounds that reran every row
    # until the fast one had its seconds ran the loop for ten minutes. A fake clock stands in
    # (steps of 1/64 s add up exactly in binary).
    clock, runs = [0.0], {"fast": 0, "slow": 0}

    def call(name, seconds):
        def run():
            runs[name] += 1
            clock[0] += seconds

        return run

    monkeypatch.setattr(
        benchmark,
        "time",
        type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0])}),
    )
    seconds = benchmark.alternating(
        {"fast": call("fast", 1 / 64), "slow": call("slow", 1.0)}, min_seconds=2.0
    )
    assert len(seconds["slow"]) == 3 and runs["slow"] == 4  # three timings after one warm-up
    assert sum(seconds["fast"]) >= 2.0 and runs["fast"] == len(seconds["fast"]) + 1 == 129
    assert seconds["slow"] == pytest.approx([1.0] * 3) and max(seconds["fast"]) == 1 / 64


def test_compile_split_flops_and_memory_of_a_matmul():
    x = jnp.ones((64, 32), jnp.float32)
    jitted = jax.jit(lambda a: jnp.tanh(a @ a.T))
    compiled, seconds = benchmark.compile_timed(jitted, x)
    assert seconds["compile_seconds"] == pytest.approx(
        seconds["trace_lower_seconds"] + seconds["xla_compile_seconds"]
    )
    assert compiled(x).shape == (64, 64)
    flops = benchmark.xla_flops(jitted, jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert flops >= 2 * 64 * 64 * 32  # the matmul alone
    memory = benchmark.memory_record(compiled)
    assert memory["argument_bytes"] == 64 * 32 * 4 and memory["output_bytes"] == 64 * 64 * 4
    assert benchmark.step_summary([1.0, 3.0, 2.0], tasks_per_step=4)["tasks_per_second"] == 2.0
    record = benchmark.machine_record()
    assert record["backend"] == jax.default_backend() and record["cpu_count"] >= 1
