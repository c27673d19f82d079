"""The k-means and PCA benchmark at a tiny size, and its bad fields."""

import pytest

from tests.helpers import assert_refused_before_work


def test_unsupervised_benchmark_writes_json_and_a_table(tmp_path):
    import json

    from jmeta.cli import run_experiment

    overrides = [
        "lloyd_shapes=1500x8x6",
        "lloyd_iters=5",
        "minibatch_shape=3000x8x16",
        "minibatch_steps=5",
        "batch_size=256",
        "pca_shape=800x20x5",
        "restarts=2",
        "rounds=1",
    ]
    results = run_experiment(
        "bench-unsupervised", str(tmp_path / "bench"), overrides, progress=False
    )
    written = json.loads((tmp_path / "bench" / "bench_unsupervised.json").read_text())
    assert written["ratios"] == results["ratios"]
    assert written["machine"]["backend"] == "cpu"
    lloyd = {r["library"]: r for r in written["rows"] if r["workload"] == "lloyd"}
    assert lloyd["jmeta"]["inertia"] == pytest.approx(lloyd["scikit-learn"]["inertia"], rel=1e-5)
    assert {r["solver"] for r in written["rows"] if r["workload"] == "pca"} == {
        "covariance_eigh",
        "full",
        "randomized",
    }
    assert all(v > 0 for k, v in written["ratios"].items() if "s/" in k or " s " in k)
    assert lloyd["jmeta"]["restarts_seconds"] > 0 and lloyd["jmeta"]["single_fits_seconds"] > 0
    assert "k-means++" in (tmp_path / "bench" / "bench_unsupervised.md").read_text()


@pytest.mark.parametrize(
    "field, message, work",
    [
        ("lloyd_shapes=100x8", "lloyd_shapes must look like ROWSxFEATURESxK", None),
        ("pca_shape=10x8x20", "every size must be positive and K at most the rows", None),
        ("rounds=0", "rounds must be a positive integer, got 0", None),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message, work):
    assert_refused_before_work(tmp_path, monkeypatch, "bench-unsupervised", field, message, work)
