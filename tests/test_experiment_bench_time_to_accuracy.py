"""The time-to-accuracy benchmark at a tiny size on the real background set, and its bad fields."""

import json

import jax
import pytest

from jmeta.cli import load_experiment, run_experiment
from jmeta.evaluate import evaluation_tasks
from jmeta.experiments import omniglot
from jmeta.tasks import make_episode_sampler
from tests.helpers import assert_refused_before_work

# cache=false: the tests must not write beside the shared data.
TINY = ["filters=8", "train_ways=10", "eval_tasks=20", "check_every=5", "cache=false"]


def test_a_seed_short_of_the_target_is_reported_not_reached_and_not_averaged(tmp_path):
    results = run_experiment(
        "bench-time-to-accuracy",
        str(tmp_path / "bench"),
        TINY + ["seeds=0", "max_steps=10", "target=0.999"],
        progress=False,
    )
    written = json.loads((tmp_path / "bench" / "time_to_accuracy.json").read_text())
    assert written["per_seed"] == json.loads(json.dumps(results["per_seed"]))
    (seed,) = written["per_seed"]
    assert not seed["reached"] and seed["seconds"] is None and seed["steps"] is None
    assert [p["step"] for p in seed["curve"]] == [5, 10]
    assert 0 < seed["curve"][0]["seconds"] < seed["curve"][1]["seconds"]
    assert written["mean_seconds"] is None and written["held_out"].startswith("256 characters")
    table = (tmp_path / "bench" / "time_to_accuracy.md").read_text()
    assert "not in 10 steps" in table and "mean of" not in table
    assert (tmp_path / "bench" / "time_to_accuracy.png").stat().st_size > 0


def test_the_clock_stops_at_the_first_check_that_reaches_the_target():
    bench = load_experiment("bench-time-to-accuracy")
    config = bench.Config(filters=8, train_ways=10, check_every=5, max_steps=50, target=0.01)
    every = omniglot.load_omniglot(config.background, config.image_size, cache=False)
    train_set, test_set = omniglot.held_out(every, config.holdout_from)
    tasks = evaluation_tasks(make_episode_sampler(test_set.images, 5, 1, 5), jax.random.key(0), 10)
    result = bench.time_to_target(config, 3, train_set, tasks, 5)
    assert result["reached"] and result["steps"] == 5 and len(result["curve"]) == 1
    assert result["seconds"] == result["curve"][0]["seconds"] > 0
    rows = bench.summary_rows(config, [result, {**result, "seed": 4, "reached": False}])
    assert rows[-1][0] == "**mean of 1/2**" and rows[1][1] == "not in 50 steps"


@pytest.mark.parametrize(
    "field, message",
    [
        ("target=1.5", r"target must be an accuracy in \(0, 1\), got 1.5"),
        ("setting=5x0", "settings: '5x0' needs at least 2 ways and 1 shot"),
        ("check_every=0", "check_every must be a positive integer, got 0"),
        ("seeds=-1", "seeds must be a non-negative integer"),
    ],
)
def test_bad_fields_are_refused_before_any_data_is_read(tmp_path, monkeypatch, field, message):
    assert_refused_before_work(
        tmp_path, monkeypatch, "bench-time-to-accuracy", field, message, "time_to_target"
    )
