"""The Omniglot one-shot classification challenge (Lake et al. 2015): error rate per run.

Command:  jmeta run omniglot-runs [runs=PATH] [background=PATH[,PATH]] [checkpoint=DIR]
          [methods=protonet,maml,nearest_neighbour,hausdorff]
Runtime:  about 12 minutes on a 2-core laptop CPU (meta-training the prototypical network
          on the background set; MAML at 20 ways takes longer); about 1 minute with
          ``checkpoint=DIR``.
Writes:   results.json, table.md, and run.png (the first run's images with each method's
          predictions).
Expected: without ``runs``: 20 within-alphabet 20-way runs built from the held-out
          Alphabet_of_the_Magi and Sanskrit characters of ``images_background.npz``, the
          prototypical network erring on about 25% of test images (17% with
          ``strided=false``, a longer run), the baselines far more.
          On the real runs Lake et al. report people at 4.5% error, Bayesian program
          learning at 3.3% and the modified Hausdorff distance at 38.8%; a siamese
          network (Koch et al. 2015) reached about 8% on a comparable within-alphabet
          20-way test.

``runs`` is the challenge's zip or folder (``runNN/training``, ``runNN/test``,
``runNN/class_labels.txt``); then every character of ``background`` trains.
``jmeta.data.write_oneshot_runs`` writes runs in that format from any zip or folder.
Without ``runs`` the background's characters from ``holdout_from`` on are held out of
training and ``num_runs`` runs are built from the alphabets ``alphabets`` names there
(``jmeta.data.make_oneshot_runs``: 20 characters of one alphabet, one drawer's images to
train and another's to test). ``checkpoint`` is the directory of an earlier ``jmeta run
omniglot`` or ``omniglot-runs`` run whose trained models are used instead of training new
ones (stage ``METHOD-{train_ways}way`` for a method of ``omniglot.ANY_WAYS``,
``METHOD-20way`` for the others; the training fields must match that run's).
``methods`` takes any of ``omniglot.ANY_WAYS`` (``protonet``, ``matching``, ``r2d2``,
``finetune``), any gradient-based algorithm of ``jmeta.algorithms`` (``maml``,
``fomaml``, ``metasgd``, ``anil``, ...; trained at 20 ways, adapted on each run's 20
training images) and the two baselines.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil

import jax
import numpy as np

from jmeta import algorithms
from jmeta.data import load_omniglot, load_oneshot_runs
from jmeta.data.omniglot import (
    ClassImages,
    concatenate,
    load_omniglot_arrays,
    make_oneshot_runs,
)
from jmeta.experiments import omniglot
from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.tasks.base import Batch
from jmeta.validation import check_fields

BASELINES = ("nearest_neighbour", "hausdorff")
METHODS = ("protonet",) + BASELINES


@dataclasses.dataclass(frozen=True)
class Config(omniglot.Training):
    runs: str = ""
    background: tuple[str, ...] = (os.path.join(omniglot.SHARED, "images_background.npz"),)
    num_runs: int = 20
    checkpoint: str = ""
    methods: tuple[str, ...] = METHODS


def modified_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Modified Hausdorff distance (Dubuisson and Jain 1994) between two stroke point sets."""
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float(max(distances.min(axis=1).mean(), distances.min(axis=0).mean()))


def _points(image: np.ndarray) -> np.ndarray:
    points = np.argwhere(image[..., 0] > 0.5).astype(np.float32)
    return points if len(points) else np.zeros((1, 2), np.float32)


def _baseline_predictions(method: str, training: np.ndarray, test: np.ndarray) -> np.ndarray:
    if method == "nearest_neighbour":
        flat_train, flat_test = training.reshape(len(training), -1), test.reshape(len(test), -1)
        return np.argmin(((flat_test[:, None] - flat_train[None]) ** 2).sum(-1), axis=1)
    train_points = [_points(image) for image in training]
    return np.array(
        [np.argmin([modified_hausdorff(_points(image), p) for p in train_points]) for image in test]
    )


def _twenty_way_model(config: Config, run: RunDir, method: str, background, progress: bool):
    """``(meta_learner, meta_params)`` of ``method`` for 20-way runs: trained, or the
    checkpoint's."""
    ways = config.train_ways if method in omniglot.ANY_WAYS else 20
    stage = f"{method}-{ways}way"
    if config.checkpoint:
        source = os.path.join(config.checkpoint, "checkpoints", f"{stage}.npz")
        if not os.path.exists(source):
            raise FileNotFoundError(
                f"checkpoint={config.checkpoint}: no {stage} checkpoint there ({source})"
            )
        if not os.path.exists(run.checkpoint_path(stage)):
            os.makedirs(os.path.dirname(run.checkpoint_path(stage)), exist_ok=True)
            shutil.copyfile(source, run.checkpoint_path(stage))
    trained, meta_params = omniglot.train_model(config, run, method, ways, background, progress)
    if method in omniglot.ANY_WAYS:
        classes = omniglot.rotated_classes(background)
        trained = omniglot.for_ways(method, trained.learners[0], 20, classes)
    return trained, meta_params


def _model_predictions(config: Config, meta_learner, meta_params, runs) -> list[np.ndarray]:
    """Per run, the training class predicted for each test image after adapting on the
    run's 20 training images (labels 0..19)."""
    predict = jax.jit(
        lambda support, query_x: meta_learner.predict(
            meta_params,
            meta_learner.adapt(meta_params, support, config.maml_num_inner_steps)[0],
            query_x,
        )
    )
    return [
        np.argmax(
            np.asarray(
                predict(Batch(r.training, np.arange(len(r.training), dtype=np.int32)), r.test)
            ),
            -1,
        )
        for r in runs
    ]


def _plot_run(one_run, predictions: dict, path: str) -> None:
    """The run's 20 training images, then its test images with each method's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(one_run.training)
    figure, axes = plt.subplots(
        1 + len(predictions),
        columns,
        figsize=(columns * 0.8, 1.1 * (1 + len(predictions))),
        squeeze=False,
    )
    for column in range(columns):
        axes[0, column].imshow(one_run.training[column, ..., 0], cmap="gray_r")
        axes[0, column].set_title(f"class {column + 1}", fontsize=6)
    for row, (method, predicted) in enumerate(predictions.items(), start=1):
        for column in range(min(columns, len(one_run.test))):
            right = predicted[column] == one_run.answers[column]
            axes[row, column].imshow(
                one_run.test[column, ..., 0], cmap="Greens" if right else "Reds"
            )
            axes[row, column].set_title(
                f"{predicted[column] + 1}" + ("" if right else f" ({one_run.answers[column] + 1})"),
                fontsize=6,
            )
        axes[row, 0].text(
            -0.2, 0.5, method, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=7
        )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        f"{one_run.name}: training images (top); test images with the predicted class "
        f"(red: wrong, true class in brackets)",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def check(config: Config) -> None:
    """Every field checked before the run folder is made or any data read."""
    check_fields(config, positive_ints=("num_runs",))
    models = [m for m in config.methods if m not in BASELINES]
    for method in models:
        if method not in omniglot.ANY_WAYS and method not in algorithms.ALGORITHMS:
            raise ValueError(
                f"methods: unknown method {method!r}; expected one of "
                f"{', '.join(omniglot.ANY_WAYS + BASELINES)} or one of "
                f"{', '.join(algorithms.ALGORITHMS)}"
            )
    if not config.background:
        raise ValueError("background: give at least one Omniglot background .npz, zip or folder")


def load_runs(config: Config) -> tuple[list, list | None, ClassImages, str]:
    """``(runs, the same runs at 105x105 for the baselines or None, training classes, where
    the runs come from)``.

    With ``runs`` the challenge's runs are read and every background character trains.
    Without, the background's characters from ``holdout_from`` on are held out and
    ``num_runs`` within-alphabet 20-way runs are built from its alphabets there (for an
    ``.npz`` the blocks that ``alphabets`` names).
    """
    baselines = bool(set(config.methods) & set(BASELINES))
    background = concatenate(
        [load_omniglot(path, config.image_size, config.cache) for path in config.background]
    )
    if config.runs:
        runs = load_oneshot_runs(config.runs, config.image_size)
        full_size = load_oneshot_runs(config.runs, 105) if baselines else None
        return runs, full_size, background, config.runs
    if len(config.background) != 1:
        raise ValueError(
            "runs: to build runs from held-out characters give one background set, or give "
            "runs=PATH"
        )
    path = config.background[0]
    train_set, test_set = omniglot.held_out(background, config.holdout_from)
    grouped = omniglot.by_alphabet(test_set, config.alphabets if omniglot.is_arrays(path) else None)
    if grouped is None:
        raise ValueError(
            f"runs: no runs given and no alphabet named by alphabets lies in the held-out "
            f"characters ({omniglot.describe(test_set)}); give runs=PATH or name their alphabets"
        )
    build = functools.partial(
        make_oneshot_runs, num_runs=config.num_runs, ways=20, seed=config.seed
    )
    full_size = None
    if baselines:  # the same classes at full size: the same runs (they depend on groups only)
        if omniglot.is_arrays(path):
            images = load_omniglot_arrays(path, 105, rows=grouped.numbers - 1, cache=False).images
        else:
            images = omniglot.held_out(load_omniglot(path, 105, config.cache), config.holdout_from)[
                1
            ].images
        full_size = build(grouped._replace(images=images))
    runs = build(grouped)
    eligible = sorted({r.name.split(" (", 1)[1][:-1] for r in runs})
    where = (
        f"{config.num_runs} within-alphabet 20-way runs built from the held-out "
        f"{', '.join(eligible)} (of {omniglot.describe(test_set)} held out of training)"
    )
    return runs, full_size, train_set, where


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    models = [m for m in config.methods if m not in BASELINES]
    run.expect_stages(len(models))
    runs, full_size, background, where = load_runs(config)
    predictions = {}
    for method in models:
        meta_learner, meta_params = _twenty_way_model(config, run, method, background, progress)
        predictions[method] = _model_predictions(config, meta_learner, meta_params, runs)
    for method in BASELINES:
        if method in config.methods:
            predictions[method] = [
                _baseline_predictions(method, r.training, r.test) for r in full_size
            ]
    errors = {
        m: [float(np.mean(p != r.answers)) for p, r in zip(predicted, runs)]
        for m, predicted in predictions.items()
    }
    _plot_run(
        runs[0], {m: predicted[0] for m, predicted in predictions.items()}, run.file("run.png")
    )
    header = ["run"] + list(errors)
    rows = [[r.name] + [f"{100 * errors[m][i]:.0f}%" for m in errors] for i, r in enumerate(runs)]
    rows.append(["**mean**"] + [f"**{100 * np.mean(errors[m]):.1f}%**" for m in errors])
    table = markdown_table(header, rows)
    with open(run.file("table.md"), "w") as f:
        f.write(table)
    print(f"\nOne-shot classification error per run: {where}\n\n{table}")
    return {
        "runs_from": where,
        "error_rate": errors,
        "mean_error_rate": {m: float(np.mean(v)) for m, v in errors.items()},
        "runs": [r.name for r in runs],
    }
