"""The omniglot experiment at a tiny size on the whole real background set (its model then reused
by omniglot-runs), the held-out block, eval=, and its bad fields."""

import dataclasses

import jax
import numpy as np
import pytest

from jmeta.cli import run_experiment
from jmeta.data import load_omniglot, parse_alphabets
from jmeta.experiments import omniglot
from jmeta.tasks import sample_tasks

# cache=false: the tests must not write beside the shared data.
TINY = ["filters=8", "num_steps=20", "log_every=10", "checkpoint_every=10", "cache=false"]


def test_omniglot_and_runs_experiments_tiny_on_the_whole_background_set(tmp_path):
    results = run_experiment(
        "omniglot",
        str(tmp_path / "omniglot"),
        TINY + ["eval_tasks=20", "plot_episodes=1"],
        progress=False,
    )
    assert results["train_characters"] == "708 characters (rows 0-707)"
    assert results["test_characters"] == "256 characters (rows 708-963)"
    assert results["within_alphabet"] == "20-way tasks within Alphabet_of_the_Magi, Sanskrit"
    accuracy = results["accuracy"]
    assert set(accuracy) == {
        "protonet/5-way 1-shot",
        "protonet/5-way 5-shot",
        "protonet/20-way 1-shot",
        "protonet/20-way 5-shot",
        "protonet/20-way 1-shot within alphabet",
    }
    assert accuracy["protonet/5-way 5-shot"]["mean"] > 0.3  # chance is 0.2
    table = (tmp_path / "omniglot" / "table.md").read_text()
    assert (
        "| protonet (Snell et al. 2017), published | 0.988 | 0.997 | 0.960 | 0.989 | - |" in table
    )
    assert "Vinyals et al.'s split" in table
    assert (tmp_path / "omniglot" / "episodes.png").stat().st_size > 0

    # The same held-out block, as within-alphabet one-shot runs, with the model above.
    reused = run_experiment(
        "omniglot-runs",
        str(tmp_path / "runs"),
        TINY + [f"checkpoint={tmp_path / 'omniglot'}", "methods=protonet,nearest_neighbour"],
        progress=False,
    )
    assert reused["runs_from"].startswith(
        "20 within-alphabet 20-way runs built from the held-out Alphabet_of_the_Magi, Sanskrit"
    )
    errors = reused["error_rate"]
    assert set(errors) == {"protonet", "nearest_neighbour"}
    assert all(len(v) == 20 and all(0 <= e <= 1 for e in v) for v in errors.values())
    assert reused["mean_error_rate"]["protonet"] < 0.95  # chance is 0.95 (20 ways)
    metrics = (tmp_path / "runs" / "metrics.jsonl").read_text()
    assert "protonet-20way" not in metrics  # the checkpoint was used, nothing was retrained
    table = (tmp_path / "runs" / "table.md").read_text()
    assert "run20 (Sanskrit)" in table and "**mean**" in table
    assert (tmp_path / "runs" / "run.png").stat().st_size > 0


def test_every_method_of_the_issue_runs_tiny_beside_its_published_figures(tmp_path):
    # Trained once and scored at 5 ways: matching networks, R2D2 and fine-tuning; trained at
    # 5 ways: BOIL, by the path every gradient-based method takes (iMAML and MAML++ on conv4
    # are in test_implicit.py and test_mamlpp.py, and through an experiment in the sinusoid's).
    methods = ("matching", "r2d2", "finetune", "boil")
    results = run_experiment(
        "omniglot",
        str(tmp_path / "run"),
        TINY
        + [
            f"methods={','.join(methods)}",
            "settings=5x1",
            "within_alphabet=false",
            "train_ways=5",
            "train_shots=1",
            "queries=2",
            "eval_tasks=10",
            "maml_num_steps=2",
            "maml_meta_batch=2",
            "plot_episodes=1",
        ],
        progress=False,
    )
    assert set(results["accuracy"]) == {f"{m}/5-way 1-shot" for m in methods}
    for method in methods:
        assert 0.0 <= results["accuracy"][f"{method}/5-way 1-shot"]["mean"] <= 1.0
    table = (tmp_path / "run" / "table.md").read_text()
    assert "| MAML++ (Antoniou et al. 2019), published | 0.995 |" in table
    assert "| matching (Vinyals et al. 2016), published | 0.981 |" in table


def test_the_named_alphabet_rows_are_those_of_the_small_zips():
    from tests.test_omniglot import SMALL1, SMALL2

    named = parse_alphabets(omniglot.NAMED_ALPHABETS)
    seen = set()
    for path in (SMALL1, SMALL2):
        small = load_omniglot(path, cache=False)
        for index, alphabet in enumerate(small.group_names):
            first, last = named[alphabet]
            rows = small.numbers[small.groups == index] - 1
            assert sorted(rows.tolist()) == list(range(first, last + 1)), alphabet
            seen.add(alphabet)
    assert set(named) - seen == {"Alphabet_of_the_Magi"}  # in neither zip: the README's word


def _hashes(images) -> set:
    """The bytes of every image and of its three rotations."""
    return {
        np.ascontiguousarray(np.rot90(image, k)).tobytes()
        for image in np.asarray(images).reshape((-1,) + np.shape(images)[-3:])
        for k in range(4)
    }


def test_training_draws_only_characters_outside_the_held_out_block():
    config = omniglot.Config(cache=False)
    train_set, test_set, grouped = omniglot.load_split(config)
    assert train_set.numbers.max() == 708 and test_set.numbers.min() == 709
    assert grouped.group_names == ("Alphabet_of_the_Magi", "Sanskrit", "Tagalog")
    sampler = omniglot.training_sampler(config, "protonet", 20, train_set)
    tasks = sample_tasks(sampler, jax.random.key(0), 30)
    drawn = [
        np.ascontiguousarray(image).tobytes()
        for image in np.concatenate([tasks.support.x, tasks.query.x], 1).reshape(-1, 28, 28, 1)
    ]
    held, trained = _hashes(test_set.images), _hashes(train_set.images)
    assert not any(d in held for d in drawn)
    assert all(d in trained for d in drawn)
    upright = {np.ascontiguousarray(i).tobytes() for i in train_set.images.reshape(-1, 28, 28, 1)}
    assert 0.1 < np.mean([d not in upright for d in drawn]) < 0.9  # rotated classes are drawn


def test_eval_trains_on_every_background_character_and_names_its_alphabets(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "evaluation.npz", images=rng.random((25, 20, 105, 105)) > 0.1)
    config = omniglot.Config(cache=False, eval=str(tmp_path / "evaluation.npz"))
    train_set, test_set, grouped = omniglot.load_split(config)
    assert len(train_set.class_names) == 964 and len(test_set.class_names) == 25
    # The background's alphabet rows say nothing of another file's rows.
    assert grouped is None
    assert omniglot.within_alphabet_set(config, grouped) == (
        None,
        "no alphabet named by eval_alphabets lies in the test characters",
    )
    named = dataclasses.replace(config, eval_alphabets=("First=0-19", "Rest=20-24"))
    within, note = omniglot.within_alphabet_set(named, omniglot.load_split(named)[2])
    assert within.group_names == ("First", "Rest") and note == "20-way tasks within First"
    with pytest.raises(ValueError, match="is the background set itself"):
        omniglot.load_split(dataclasses.replace(config, eval=config.background))
    with pytest.raises(ValueError, match=r"holdout_from must be in \(0, 964\)"):
        omniglot.load_split(omniglot.Config(cache=False, holdout_from=964))


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
        ("alphabets=Greek", "alphabets: 'Greek' is not NAME=FIRST-LAST"),
        ("holdout_from=0", "holdout_from must be a positive integer, got 0"),
        ("methods=protonet,prototypes", "methods: unknown method 'prototypes'"),
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
