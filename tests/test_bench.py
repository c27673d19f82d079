"""``jmeta bench`` at its tiny size: valid JSON with every field filled, a markdown table
and plots, and a budget of a few seconds respected (later workloads listed as skipped)."""

import json
import os
import subprocess
import sys
import time

import pytest

RECORD_FIELDS = (
    "workload",
    "row",
    "mesh_shape",
    "shapes",
    "trace_lower_seconds",
    "xla_compile_seconds",
    "seconds_median",
    "seconds_spread",
    "seconds_raw",
    "tasks_per_second",
    "memory_analysis",
    "xla_flops",
    "flops_per_second",
    "fraction_of_matmul_peak",
    "correctness",
)
ENVIRONMENT_FIELDS = (
    "schema_version",
    "time",
    "git_commit",
    "git_dirty",
    "command",
    "jax",
    "jaxlib",
    "xla_flags",
    "environment",
    "device_kind",
    "device_count",
    "ceilings",
)


@pytest.fixture(scope="module")
def short_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    began = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jmeta",
            "bench",
            "--tiny",
            "--suite",
            "all",
            "--budget-seconds",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, time.monotonic() - began, done


def test_bench_writes_every_field(short_bench):
    out, _, _ = short_bench
    with open(out / "bench.json") as f:
        report = json.load(f)
    assert report["device_count"] == 8  # the simulated CPU devices of the scaling rows
    assert report["ceilings"]["matmul_float32_flops_per_second"] > 0
    assert report["ceilings"]["copy_bytes_per_second"] > 0
    records = [name for name in os.listdir(out) if name[:2].isdigit()]
    assert records
    for name in records:
        with open(out / name) as f:
            entry = json.load(f)
        for field in RECORD_FIELDS + ENVIRONMENT_FIELDS:
            assert entry.get(field) is not None, (name, field)
        assert len(entry["seconds_raw"]) >= 3 and entry["seconds_median"] > 0
        assert entry["trace_lower_seconds"] > 0 and entry["xla_compile_seconds"] > 0
        assert entry["memory_analysis"]["total_bytes"] > 0 and entry["xla_flops"] > 0
        assert all(v == v for v in entry["correctness"].values())  # no NaN
    with open(out / "bench.md") as f:
        table = f.read()
    assert "| sinusoid-maml-meta-batch | meta_batch=8 |" in table
    assert os.path.exists(out / "tasks_per_second.png")


def test_bench_respects_its_budget(short_bench):
    out, elapsed, _ = short_bench
    with open(out / "bench.json") as f:
        report = json.load(f)
    # The first workload starts within the budget and finishes; nothing after it starts.
    assert {r["workload"] for r in report["records"]} == {"sinusoid-maml-meta-batch"}
    assert "sinusoid-maml-remat" in report["skipped"] and "suite fewshot" in report["skipped"]
    assert "skipped (over the budget)" in open(out / "bench.md").read()
    assert elapsed < 120  # one workload's compiles, not the whole suite's four minutes


def test_bench_refuses_a_bad_budget():
    done = subprocess.run(
        [sys.executable, "-m", "jmeta", "bench", "--budget-seconds", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--budget-seconds must be positive" in done.stderr
