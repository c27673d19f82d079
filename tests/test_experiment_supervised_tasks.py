"""The supervised-tasks experiment at a tiny size, and its bad fields."""

import pytest

from jmeta.cli import run_experiment
from tests.helpers import assert_refused_before_work


def test_tiny_run_writes_its_table_and_results(tmp_path):
    results = run_experiment(
        "supervised-tasks",
        str(tmp_path / "run"),
        ["train_tasks=16", "test_tasks=16", "max_iter=20"],
        progress=False,
    )
    assert set(results) == {"sinusoid", "linear"}
    assert "strategy" in results["sinusoid"]["held_out_mse"]
    assert (tmp_path / "run" / "table.md").read_text().count("|") > 10
    assert (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
    "field, message, work",
    [
        ("test_tasks=0", "test_tasks must be a positive integer, got 0", "SupervisedMetaLearner"),
        ("lr=nan", "lr must be a positive finite number, got nan", "SupervisedMetaLearner"),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message, work):
    assert_refused_before_work(tmp_path, monkeypatch, "supervised-tasks", field, message, work)
