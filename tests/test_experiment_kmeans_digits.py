"""The k-means digits experiment, jmeta beside scikit-learn, and its bad fields."""

import pytest

from tests.helpers import assert_refused_before_work


def test_kmeans_digits_experiment_puts_both_libraries_side_by_side(tmp_path):
    import json

    from jmeta.cli import run_experiment

    results = run_experiment("kmeans-digits", str(tmp_path / "run"), ["n_init=1"], progress=False)
    for library in ("jmeta", "scikit-learn"):
        assert set(results["results"][library]) == {"k-means++", "random", "PCA-based"}
    # From the same (PCA) centres the two libraries must reach the same clustering.
    ours, theirs = (
        results["results"]["jmeta"]["PCA-based"],
        results["results"]["scikit-learn"]["PCA-based"],
    )
    assert results["checks"]["pca_init_inertia_relative_difference"] < 1e-5
    assert ours["ari"] == pytest.approx(theirs["ari"], abs=1e-9)
    assert 0.9 < results["checks"]["kmeanspp_inertia_ratio"] < 1.1
    assert (tmp_path / "run" / "clusters.png").stat().st_size > 10_000
    assert "| PCA-based | jmeta |" in (tmp_path / "run" / "table.md").read_text()
    assert (
        json.loads((tmp_path / "run" / "results.json").read_text())["checks"] == results["checks"]
    )


@pytest.mark.parametrize(
    "field, message, work",
    [
        ("n_init=0", "n_init must be a positive integer, got 0", None),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message, work):
    assert_refused_before_work(tmp_path, monkeypatch, "kmeans-digits", field, message, work)
