"""The sinusoid experiment at a tiny size: its run, its files, exact resume and its bad fields."""

import json
import subprocess
import sys

import pytest

import jmeta.training
from jmeta.cli import run_experiment
from jmeta.training import fit
from tests.helpers import assert_refused_before_work

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


def test_tiny_run_scores_every_method_and_step(tmp_path):
    # The command at a tiny size: iMAML with its own inner steps.
    results = run_experiment(
        "sinusoid",
        str(tmp_path / "run"),
        [
            "methods=maml,imaml,mamlpp,boil",
            "shots=5",
            "num_steps=20",
            "eval_tasks=10",
            "eval_queries=10",
            "train_shots_for_anchor=5",
            "log_every=10",
            "checkpoint_every=10",
            "plot_tasks=1",
            "eval_steps=1,3",
            "pretrained_baseline=false",
        ],
        progress=False,
    )
    for method in ("maml", "imaml", "mamlpp", "boil"):
        scores = results["scores"][f"{method}/train5/eval5"]
        assert set(scores) == {"0", "1", "3"}
        assert all(0 < s["mean"] < 100 and 0 < s["ci95"] < s["mean"] for s in scores.values())
    labels = [row[0] for row in results["table"]["rows"]]
    assert labels == ["MAML", "iMAML (40 inner steps)", "MAML++", "BOIL"]
    assert (tmp_path / "run" / "adapted_curves.png").stat().st_size > 0


@pytest.mark.parametrize(
    "field, message, work",
    [
        ("outer_lr=nan", "outer_lr must be a positive finite number, got nan", "_train"),
        ("eval_tasks=0", "eval_tasks must be a positive integer, got 0", "_train"),
        ("eval_steps=1,0", "eval_steps must be a positive integer, got 0", "_train"),
        ("plot_tasks=0", "plot_tasks must be a positive integer, got 0", "_train"),
        (
            "checkpoint_every=7",
            "checkpoint_every \\(7\\) must be a multiple of log_every",
            "_train",
        ),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message, work):
    assert_refused_before_work(tmp_path, monkeypatch, "sinusoid", field, message, work)
