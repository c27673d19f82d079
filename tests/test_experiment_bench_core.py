"""The core benchmark at a tiny size, and its bad fields."""

import json

import pytest

from jmeta.cli import run_experiment
from tests.helpers import assert_refused_before_work


def test_core_benchmark_writes_json_and_a_table(tmp_path):
    overrides = [
        "meta_batch=4",
        "baseline_meta_batch=8",
        "min_seconds=0.05",
        "tasks_per_call=64",
        "memory_num_inner_steps=1,3",
        "memory_meta_batch=4",
        "torch_baseline=false",
    ]
    results = run_experiment("bench-core", str(tmp_path / "bench"), overrides, progress=False)
    written = json.loads((tmp_path / "bench" / "bench_core.json").read_text())
    assert written["ratios"] == results["ratios"]
    assert {(r["algorithm"], r["meta_batch"]) for r in written["throughput"]} == {
        (a, b) for a in ("maml", "metasgd") for b in (4, 8)
    }
    assert all(r["step_compiles"] == 1 and r["tasks_per_second"] > 0 for r in written["throughput"])
    memory = {(r["remat"], r["num_inner_steps"]): r["temp_bytes"] for r in written["memory"]}
    assert memory[("none", 3)] > memory[("none", 1)]
    assert "remat" in (tmp_path / "bench" / "bench_core.md").read_text()


@pytest.mark.parametrize(
    "field, message, work",
    [
        ("meta_batch=25,0", "meta_batch must be a positive integer, got 0", "_jmeta_throughput"),
        (
            "tasks_per_call=0",
            "tasks_per_call must be a positive integer, got 0",
            "_jmeta_throughput",
        ),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message, work):
    assert_refused_before_work(tmp_path, monkeypatch, "bench-core", field, message, work)
