"""The ``jmeta`` command and the sinusoid experiment at a tiny size."""

import json
import subprocess
import sys

import pytest

import jmeta.training
from jmeta.cli import experiment_names, main, run_experiment
from jmeta.training import fit

TINY = [
    "methods=maml,metasgd",
    "shots=5",
    "num_steps=40",
    "eval_tasks=20",
    "eval_queries=10",
    "train_shots_for_anchor=5",
    "log_every=10",
    "checkpoint_every=20",
    "plot_tasks=2",
    "eval_steps=1,3",
]


def test_list_shows_the_experiments(capsys):
    assert {"sinusoid", "bench-core"} <= set(experiment_names())
    assert main(["list"]) == 0
    assert "sinusoid: Sinusoid regression" in capsys.readouterr().out


@pytest.mark.slow
def test_command_line_from_another_directory(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "jmeta",
        "run",
        "sinusoid",
        "--out",
        str(out),
        "--no-progress",
        *TINY,
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| MAML | 5 |" in result.stdout
    for name in (
        "config.json",
        "metrics.jsonl",
        "results.json",
        "table.md",
        "table.csv",
        "adapted_curves.png",
    ):
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"maml-k5", "metasgd-k5", "pretrained-k5"}
    assert [r["step"] for r in records if r["stage"] == "maml-k5"] == [10, 20, 30, 40]
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]["maml/train5/eval5"]) == {"0", "1", "3"}

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_bad_command_lines_exit_2_with_a_message(tmp_path, capsys):
    assert main(["run", "sinusiod", "--out", str(tmp_path / "a")]) == 2
    assert "unknown experiment 'sinusiod'" in capsys.readouterr().err
    assert main(["run", "sinusoid", "--out", str(tmp_path / "b"), "num_step=3"]) == 2
    assert "unknown config field 'num_step'" in capsys.readouterr().err
    assert main(["run", "sinusoid", "--out", str(tmp_path / "c"), "methods=mamll"]) == 2
    assert "unknown algorithm 'mamll'" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize(
    "experiment, field, message, work",
    [
        (
            "sinusoid",
            "outer_lr=nan",
            "outer_lr must be a positive finite number, got nan",
            "_train",
        ),
        ("sinusoid", "eval_tasks=0", "eval_tasks must be a positive integer, got 0", "_train"),
        ("sinusoid", "eval_steps=1,0", "eval_steps must be a positive integer, got 0", "_train"),
        ("sinusoid", "plot_tasks=0", "plot_tasks must be a positive integer, got 0", "_train"),
        (
            "sinusoid",
            "checkpoint_every=7",
            r"checkpoint_every \(7\) must be a multiple of log_every",
            "_train",
        ),
        (
            "supervised-gender",
            "n_folds=1",
            "n_folds must be an integer >= 2, got 1",
            "repeated_comparison",
        ),
        (
            "supervised-gender",
            "n_repeats=0",
            "n_repeats must be a positive integer, got 0",
            "repeated_comparison",
        ),
        (
            "supervised-benchmarks",
            "n_folds=1",
            "n_folds must be an integer >= 2, got 1",
            "repeated_comparison",
        ),
        (
            "supervised-tasks",
            "test_tasks=0",
            "test_tasks must be a positive integer, got 0",
            "SupervisedMetaLearner",
        ),
        (
            "supervised-tasks",
            "lr=nan",
            "lr must be a positive finite number, got nan",
            "SupervisedMetaLearner",
        ),
        (
            "bench-core",
            "meta_batch=25,0",
            "meta_batch must be a positive integer, got 0",
            "_jmeta_throughput",
        ),
        (
            "bench-core",
            "tasks_per_call=0",
            "tasks_per_call must be a positive integer, got 0",
            "_jmeta_throughput",
        ),
    ],
)
def test_experiments_refuse_a_bad_field_before_any_work(
    tmp_path, monkeypatch, experiment, field, message, work
):
    # Such values used to fail only after training, under an internal name (num_tasks,
    # matplotlib's "Number of rows"), as a TypeError, or not at all (outer_lr=nan).
    from jmeta.cli import load_experiment

    monkeypatch.setattr(
        load_experiment(experiment), work, lambda *a, **k: pytest.fail("worked before checking")
    )
    with pytest.raises(ValueError, match=message):
        run_experiment(experiment, str(tmp_path / "run"), [field], progress=False)


@pytest.mark.slow
def test_resumed_experiment_ends_with_the_results_of_an_uninterrupted_one(tmp_path, monkeypatch):
    reference = run_experiment("sinusoid", str(tmp_path / "reference"), TINY, progress=False)

    calls = {"n": 0}

    def crashing_fit(meta_step, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second model dies after its first checkpoint
            inner_calls = {"n": 0}
            real_run = meta_step.run

            def run(*run_args):
                inner_calls["n"] += 1
                if inner_calls["n"] == 3:
                    raise KeyboardInterrupt
                return real_run(*run_args)

            meta_step = meta_step._replace(run=run)
        return fit(meta_step, *args, **kwargs)

    monkeypatch.setattr(jmeta.training, "fit", crashing_fit)  # what jmeta.train calls
    with pytest.raises(KeyboardInterrupt):
        run_experiment("sinusoid", str(tmp_path / "resumed"), TINY, progress=False)
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(jmeta.training, "fit", fit)
    with pytest.raises(ValueError, match="differ from the saved config"):
        run_experiment(
            None, None, ["num_steps=50"], resume=str(tmp_path / "resumed"), progress=False
        )
    resumed = run_experiment(None, None, [], resume=str(tmp_path / "resumed"), progress=False)

    assert resumed == reference
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == (
        tmp_path / "reference" / "metrics.jsonl"
    ).read_text()


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
