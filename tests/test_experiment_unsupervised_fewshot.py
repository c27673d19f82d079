"""The unsupervised-fewshot experiment: a tiny run, its data splits and its bad fields."""

import dataclasses

import chex
import numpy as np
import pytest

from jmeta.cli import run_experiment
from jmeta.runs import RunDir
from tests.helpers import assert_refused_before_work


def test_tiny_run_on_digits_writes_every_baseline_and_file(tmp_path):
    results = run_experiment(
        "unsupervised-fewshot",
        str(tmp_path / "run"),
        [
            "dataset=digits",
            "ways=5",
            "queries=3",
            "rounds=2",
            "steps_per_round=20",
            "max_shift=0",
            "filters=8",
            "n_clusters=30",
            "eval_tasks=20",
            "round_tasks=10",
            "scratch_tasks=5",
            "scratch_steps=2",
            "plot_episodes=1",
            "settings=5x1",
        ],
        progress=False,
    )
    accuracy = results["accuracy"]
    assert {
        "jmeta (unsupervised)",
        "pixels + nearest neighbour",
        "supervised ceiling (true labels)",
    } <= set(accuracy)
    ours = accuracy["jmeta (unsupervised)"]["5-way 1-shot"]
    assert ours["tasks"] == 20 and 0.2 < ours["mean"] <= 1.0  # chance is 0.2
    assert len(results["history"]) == 2
    for name in ("table.md", "history.png", "episodes.png", "results.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0


@pytest.mark.parametrize(
    "field, message",
    [
        ("dataset=cifar", "unknown dataset 'cifar'"),
        ("ways=1", "ways must be an integer >= 2, got 1"),
        ("steps_per_round=0", "steps_per_round must be a positive integer, got 0"),
        ("outer_lr=nan", "outer_lr must be a positive finite number, got nan"),
        ("settings=5x0", "settings: '5x0' needs at least 2 ways and 1 shot"),
        ("dataset=mnist", "dataset=mnist needs mnist=DIR"),
    ],
)
def test_a_bad_field_is_refused_before_any_work(tmp_path, monkeypatch, field, message):
    assert_refused_before_work(
        tmp_path, monkeypatch, "unsupervised-fewshot", field, message, "load_split"
    )


@pytest.mark.slow
def test_tiny_unsupervised_fewshot_run_on_digits_beats_nearest_neighbour_on_pixels(tmp_path):
    from jmeta.cli import load_experiment

    experiment = load_experiment("unsupervised-fewshot")
    config = experiment.Config(
        dataset="digits",
        ways=10,
        queries=3,
        rounds=2,
        steps_per_round=150,
        max_shift=0,
        filters=32,
        n_clusters=30,
        eval_tasks=200,
        round_tasks=50,
        scratch_tasks=20,
        scratch_steps=5,
        supervised=False,
        plot_episodes=1,
        settings=("10x1",),
    )
    results = experiment.main(
        config, RunDir(tmp_path, "unsupervised-fewshot", config), progress=False
    )
    accuracy = results["accuracy"]
    ours = accuracy["jmeta (unsupervised)"]["10-way 1-shot"]
    assert ours["tasks"] == 200
    assert ours["mean"] > accuracy["pixels + nearest neighbour"]["10-way 1-shot"]["mean"] + 0.02
    for name in ("table.md", "history.png", "episodes.png"):
        assert (tmp_path / name).exists()
    assert len(results["history"]) == 2 and "eval_accuracy" in results["history"][1]


def test_mnist_split_reads_idx_files_and_halves_them(tmp_path):
    import struct

    from jmeta.cli import load_experiment

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.tile(np.arange(10, dtype=np.uint8), 4)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">BBBBIII", 0, 0, 8, 3, 40, 28, 28) + images.tobytes()
    )
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        struct.pack(">BBBBI", 0, 0, 8, 1, 40) + labels.tobytes()
    )
    experiment = load_experiment("unsupervised-fewshot")
    fit_x, fit_y, test, _ = experiment.load_split(
        experiment.Config(dataset="mnist", mnist=str(tmp_path))
    )
    np.testing.assert_allclose(fit_x[..., 0], images[:20] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(fit_y, labels[:20])
    chex.assert_shape(test.images, (10, 2, 28, 28, 1))
    with pytest.raises(ValueError, match="dataset=mnist needs mnist=DIR"):
        experiment.check(experiment.Config(dataset="mnist"))


def test_omniglot_split_holds_out_rows_or_fits_everything_when_eval_is_given(tmp_path):
    from jmeta.cli import load_experiment

    rng = np.random.default_rng(1)
    for name, rows in (("background.npz", 6), ("evaluation.npz", 3)):
        np.savez(
            tmp_path / name,
            images=rng.random((rows, 2, 105, 105)) > 0.5,
            labels=np.repeat(np.arange(rows), 2).reshape(rows, 2),
        )
    experiment = load_experiment("unsupervised-fewshot")
    held_out = experiment.Config(omniglot=str(tmp_path / "background.npz"), holdout_from=4)
    fit_x, fit_y, test, _ = experiment.load_split(held_out)
    chex.assert_shape(fit_x, (8, 28, 28, 1))
    np.testing.assert_array_equal(fit_y, [0, 0, 1, 1, 2, 2, 3, 3])
    assert test.class_names == ("background/0005", "background/0006")
    full = dataclasses.replace(held_out, eval=str(tmp_path / "evaluation.npz"))
    fit_x, _, test, _ = experiment.load_split(full)
    chex.assert_shape(fit_x, (12, 28, 28, 1))
    chex.assert_shape(test.images, (3, 2, 28, 28, 1))
    with pytest.raises(ValueError, match=r"holdout_from must be in \(0, 6\)"):
        experiment.load_split(dataclasses.replace(held_out, holdout_from=6))
