"""The supervised-benchmarks experiment at a tiny size, and its bad fields."""

import pytest

from jmeta.cli import run_experiment
from tests.helpers import assert_refused_before_work


def test_tiny_run_writes_its_table_and_results(tmp_path):
    results = run_experiment(
        "supervised-benchmarks",
        str(tmp_path / "run"),
        ["datasets=iris,diabetes", "n_repeats=2"],
        progress=False,
    )
    assert set(results) == {"iris", "diabetes"}
    assert "learned strategy (sigmoid)" in results["iris"]["scores"]
    assert (tmp_path / "run" / "table.md").read_text().count("|") > 10
    assert (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
    "field, message, work",
    [
        ("n_folds=1", "n_folds must be an integer >= 2, got 1", "repeated_comparison"),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message, work):
    assert_refused_before_work(tmp_path, monkeypatch, "supervised-benchmarks", field, message, work)
