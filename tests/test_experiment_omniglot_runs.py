"""The omniglot-runs experiment on a runs fixture: baselines, MAML at twenty ways, bad fields."""

import numpy as np
import pytest

from jmeta.cli import run_experiment
from jmeta.experiments.omniglot_runs import modified_hausdorff
from tests.omniglot_fixture import build_runs_zip
from tests.test_omniglot import SMALL1, SMALL2

# cache=false: the tests must not write beside the shared data.
TINY = ["filters=8", "num_steps=20", "log_every=10", "checkpoint_every=10", "cache=false"]


def test_modified_hausdorff_against_a_hand_computation():
    a = np.array([[0.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 1.0]])
    # from a: nearest distances 1 and 1 (mean 1); from b: nearest distance 1 (mean 1)
    assert modified_hausdorff(a, b) == 1.0
    assert modified_hausdorff(a, a) == 0.0


def test_runs_with_maml_trained_at_twenty_ways(tmp_path):
    runs_zip = build_runs_zip(
        SMALL2, tmp_path / "runs.zip", alphabets=("Japanese_(katakana)", "Sanskrit")
    )
    results = run_experiment(
        "omniglot-runs",
        str(tmp_path / "runs"),
        TINY
        + [
            f"runs={runs_zip}",
            f"background={SMALL1}",
            "methods=maml",
            "maml_num_steps=3",
            "maml_meta_batch=2",
            "execution=cpu",
        ],
        progress=False,
    )
    assert set(results["error_rate"]) == {"maml"}
    assert len(results["error_rate"]["maml"]) == 20
    assert all(0 <= e <= 1 for e in results["error_rate"]["maml"])
    assert "maml-20way" in (tmp_path / "runs" / "metrics.jsonl").read_text()
    # a checkpoint directory without that method's stage is an error, not a silent retrain
    with pytest.raises(FileNotFoundError, match="no fomaml-20way checkpoint"):
        run_experiment(
            "omniglot-runs",
            str(tmp_path / "again"),
            TINY + [f"runs={runs_zip}", "methods=fomaml", f"checkpoint={tmp_path / 'runs'}"],
            progress=False,
        )


def test_runs_refuses_an_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'mamal'"):
        run_experiment(
            "omniglot-runs",
            str(tmp_path / "runs"),
            [f"runs={tmp_path}", "methods=protonet,mamal"],
            progress=False,
        )


def test_runs_refuses_a_bad_training_field_before_reading_the_runs(tmp_path):
    with pytest.raises(ValueError, match="train_ways must be an integer >= 2, got 1"):
        run_experiment(
            "omniglot-runs",
            str(tmp_path / "runs"),
            [f"runs={tmp_path / 'missing.zip'}", "train_ways=1"],
            progress=False,
        )
