"""The Omniglot one-shot classification challenge (Lake et al. 2015): error rate per run.

Command:  jmeta run omniglot-runs runs=PATH [background=PATH[,PATH]] [checkpoint=DIR]
          [methods=protonet,maml,nearest_neighbour,hausdorff]
Runtime:  about 5 minutes on a 2-core laptop CPU (meta-training the prototypical network
          on the background set; MAML at 20 ways takes longer); about 20 seconds with
          ``checkpoint=DIR``.
Writes:   results.json, table.md, and run.png (the first run's images with each method's
          predictions).
Expected: on the real 20 runs the modified Hausdorff distance errs on about 38.8% and
          nearest neighbour in pixel space on about 81%; people err on 4.5% and Bayesian
          program learning on 3.3% (with the full 30-alphabet background set). A
          prototypical network trained only on a small background set should beat the
          Hausdorff baseline by a wide margin.

``runs`` is the challenge's zip or folder (``runNN/training``, ``runNN/test``,
``runNN/class_labels.txt``); ``jmeta.data.write_oneshot_runs`` builds runs in that format
from any background set. ``checkpoint`` is the directory of an earlier ``jmeta run
omniglot`` or ``omniglot-runs`` run whose trained models are used instead of training new
ones (stages ``protonet-{train_ways}way`` and ``METHOD-20way``; the training fields must
match that run's). ``methods`` takes ``protonet``, any gradient-based algorithm of
``jmeta.algorithms`` (``maml``, ``fomaml``, ``metasgd``, ``anil``, ...; trained at 20
ways, adapted on each run's 20 training images) and the two baselines.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import numpy as np

from jmeta import algorithms
from jmeta.data import load_omniglot, load_oneshot_runs
from jmeta.data.omniglot import concatenate
from jmeta.experiments import omniglot
from jmeta.protonet import make_protonet
from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.tasks.base import Batch

BASELINES = ("nearest_neighbour", "hausdorff")
METHODS = ("protonet",) + BASELINES


@dataclasses.dataclass(frozen=True)
class Config(omniglot.Training):
    runs: str = ""
    background: tuple[str, ...] = (os.path.join(omniglot.SHARED, "images_background_small1.zip"),)
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
    ways = config.train_ways if method == "protonet" else 20
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
    return (
        make_protonet(trained.learners[0], 20) if method == "protonet" else trained
    ), meta_params


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
    if not config.runs:
        raise ValueError(
            "runs: give the one-shot runs zip or folder, e.g. jmeta run omniglot-runs "
            "runs=all_runs.zip"
        )
    models = [m for m in config.methods if m not in BASELINES]
    for method in models:
        if method != "protonet" and method not in algorithms.ALGORITHMS:
            raise ValueError(
                f"methods: unknown method {method!r}; expected protonet, "
                f"{', '.join(BASELINES)} or one of {', '.join(algorithms.ALGORITHMS)}"
            )
    if models and not config.background:
        raise ValueError("background: give at least one Omniglot background zip or folder")


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    models = [m for m in config.methods if m not in BASELINES]
    run.expect_stages(len(models))
    runs = load_oneshot_runs(config.runs, config.image_size)
    full_size = (
        load_oneshot_runs(config.runs, 105) if set(config.methods) & set(BASELINES) else None
    )
    predictions = {}
    if models:
        background = concatenate(
            [load_omniglot(path, config.image_size, config.cache) for path in config.background]
        )
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
    print(f"\nOne-shot classification error per run ({len(runs)} runs)\n\n{table}")
    return {
        "error_rate": errors,
        "mean_error_rate": {m: float(np.mean(v)) for m, v in errors.items()},
        "runs": [r.name for r in runs],
    }
