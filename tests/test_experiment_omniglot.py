"""The omniglot experiment at a tiny size on the real background sets (its models then reused by
omniglot-runs), and its bad fields."""

import pytest

from jmeta.cli import run_experiment
from jmeta.data import load_oneshot_runs
from tests.omniglot_fixture import build_runs_zip
from tests.test_omniglot import SMALL1, SMALL2

# cache=false: the tests must not write beside the shared data.
TINY = ["filters=8", "num_steps=20", "log_every=10", "checkpoint_every=10", "cache=false"]


def test_omniglot_and_runs_experiments_tiny(tmp_path):
    results = run_experiment(
        "omniglot",
        str(tmp_path / "omniglot"),
        TINY + ["eval_tasks=20", "plot_episodes=1", f"background={SMALL1}", f"evaluation={SMALL2}"],
        progress=False,
    )
    assert set(results["test_alphabets"]) == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}
    accuracy = results["accuracy"]
    assert set(accuracy) == {
        "protonet/5-way 1-shot",
        "protonet/5-way 5-shot",
        "protonet/20-way 1-shot",
        "protonet/20-way 5-shot",
        "protonet/20-way 1-shot within alphabet",
    }
    assert accuracy["protonet/5-way 5-shot"]["mean"] > 0.3  # chance is 0.2
    assert (tmp_path / "omniglot" / "episodes.png").stat().st_size > 0

    runs_zip = build_runs_zip(
        SMALL2, tmp_path / "runs.zip", alphabets=("Japanese_(katakana)", "Sanskrit")
    )
    assert len(load_oneshot_runs(runs_zip)) == 20
    reused = run_experiment(
        "omniglot-runs",
        str(tmp_path / "runs"),
        TINY + [f"runs={runs_zip}", f"checkpoint={tmp_path / 'omniglot'}"],
        progress=False,
    )
    errors = reused["error_rate"]
    assert set(errors) == {"protonet", "nearest_neighbour", "hausdorff"}
    assert all(len(v) == 20 and all(0 <= e <= 1 for e in v) for v in errors.values())
    assert reused["mean_error_rate"]["protonet"] < 0.95  # chance is 0.95 (20 ways)
    metrics = (tmp_path / "runs" / "metrics.jsonl").read_text()
    assert "protonet-20way" not in metrics  # the checkpoint was used, nothing was retrained
    table = (tmp_path / "runs" / "table.md").read_text()
    assert "run20" in table and "**mean**" in table
    assert (tmp_path / "runs" / "run.png").stat().st_size > 0


@pytest.mark.parametrize(
    "field, message",
    [
        ("eval_tasks=0", "eval_tasks must be a positive integer, got 0"),
        ("train_ways=1", "train_ways must be an integer >= 2, got 1"),
        ("settings=5x1,1x1", "settings: '1x1' needs at least 2 ways and 1 shot"),
        ("settings=5x0", "settings: '5x0' needs at least 2 ways"),
        ("outer_lr=nan", "outer_lr must be a positive finite number, got nan"),
        ("meta_batch=0", "meta_batch must be a positive integer, got 0"),
        ("execution=tpu", "unknown execution 'tpu'"),
        ("maml_num_steps=0", "maml_num_steps must be a positive integer, got 0"),
        ("checkpoint_every=75", r"checkpoint_every \(75\) must be a multiple of log_every \(50\)"),
        ("plot_episodes=0", "plot_episodes must be a positive integer, got 0"),
    ],
)
def test_omniglot_refuses_a_bad_field_before_reading_data(tmp_path, field, message):
    # The background does not exist: a check made only after loading (or after training,
    # as eval_tasks=0 once was, with an IndexError) would raise something else.
    with pytest.raises(ValueError, match=message):
        run_experiment(
            "omniglot",
            str(tmp_path / "run"),
            [field, f"background={tmp_path / 'missing.zip'}"],
            progress=False,
        )
