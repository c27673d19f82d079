"""The supervised-gender experiment at a tiny size, and its bad fields."""

import numpy as np
import pytest

from jmeta.cli import run_experiment
from tests.helpers import assert_refused_before_work


def test_tiny_run_writes_its_table_and_results(tmp_path):
    results = run_experiment(
        "supervised-gender",
        str(tmp_path / "run"),
        ["n_repeats=2", "men=60", "women=60"],
        progress=False,
    )
    assert "scikit-learn Stacking" in results["scores"]
    assert (tmp_path / "run" / "table.md").read_text().count("|") > 10
    assert (tmp_path / "run" / "results.json").exists()


def test_synthetic_population_is_plausible():
    from jmeta.experiments.supervised_gender import synthetic_population

    X, y = synthetic_population(2000, 2000, 0)
    men, women = X[y == 0], X[y == 1]
    assert 173 < men[:, 0].mean() < 178 and 159 < women[:, 0].mean() < 164
    assert men[:, 1].mean() > women[:, 1].mean() and 20 <= X[:, 2].min() and X[:, 2].max() < 80
    assert np.corrcoef(X[:, 0], X[:, 1])[0, 1] > 0.2  # weight follows height


@pytest.mark.parametrize(
    "field, message, work",
    [
        ("n_folds=1", "n_folds must be an integer >= 2, got 1", "repeated_comparison"),
        ("n_repeats=0", "n_repeats must be a positive integer, got 0", "repeated_comparison"),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message, work):
    assert_refused_before_work(tmp_path, monkeypatch, "supervised-gender", field, message, work)
