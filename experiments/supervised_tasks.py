"""The differentiable supervised meta-learner across tasks: an MLP and a linear base learner.

Command:  jmeta run supervised-tasks
Runtime:  about 30 seconds on a 2-core laptop CPU.
Expected: meta-trained on sinusoid tasks the strategy puts most of its weight on the MLP;
          on linear tasks (y = a x + b + noise) it moves to the linear learner. Scores on
          held-out tasks of each family for the strategy and each learner alone.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jmeta.models import linear_learner, mlp_learner
from jmeta.runs import RunDir
from jmeta.sharding import check_devices, mesh_for
from jmeta.stats import format_mean_ci, markdown_table, mean_ci95
from jmeta.strategy import ACTIVATIONS
from jmeta.supervised import SupervisedMetaLearner
from jmeta.tasks import make_linear_sampler, make_sinusoid_sampler, sample_tasks
from jmeta.validation import check_choice, check_fields

FAMILIES = {
    "sinusoid": lambda shots, query: make_sinusoid_sampler(shots, query),
    "linear": lambda shots, query: make_linear_sampler(shots, query, noise=0.3),
}


@dataclasses.dataclass(frozen=True)
class Config:
    families: tuple[str, ...] = ("sinusoid", "linear")
    train_tasks: int = 200
    test_tasks: int = 600
    shots: int = 10
    queries: int = 20
    num_inner_steps: int = 1
    inner_lr: float = 0.01
    max_iter: int = 500
    lr: float = 0.01
    activation: str = "softmax"
    seed: int = 0
    # 1: one device; n: the training tasks split over a mesh of n devices; 0: all.
    devices: int = 1


def check(config: Config) -> None:
    """Every field checked before the run folder is made or any data read."""
    check_fields(
        config,
        positive_ints=(
            "train_tasks",
            "test_tasks",
            "shots",
            "queries",
            "num_inner_steps",
            "max_iter",
        ),
        positive_floats=("inner_lr", "lr"),
    )
    for family in config.families:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    check_choice("activation", config.activation, ACTIVATIONS)
    check_devices(config.devices, train_tasks=config.train_tasks)


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    results, rows = {}, []
    for family in config.families:
        sampler = FAMILIES[family](config.shots, config.queries)
        key = jax.random.key(config.seed)
        train = sample_tasks(sampler, jax.random.fold_in(key, 1), config.train_tasks)
        test = sample_tasks(sampler, jax.random.fold_in(key, 2), config.test_tasks)
        learners = [
            mlp_learner(jax.random.fold_in(key, 3)),
            linear_learner(jax.random.fold_in(key, 4)),
        ]
        model = SupervisedMetaLearner(
            learners,
            activation=config.activation,
            loss="mse",
            optimizer="adam",
            lr=config.lr,
            max_iter=config.max_iter,
            num_inner_steps=config.num_inner_steps,
            inner_lr=config.inner_lr,
            seed=config.seed,
            verbose=progress,
            mesh=mesh_for(config.devices),
        )
        history = model.train(*train.support, *train.query)
        for epoch in range(0, config.max_iter, max(1, config.max_iter // 10)):
            run.log(
                {
                    "stage": family,
                    "step": epoch,
                    "train/loss": float(history["loss"][epoch]),
                    "train/task_mse_mean": float(np.mean(history["test_metric"][epoch])),
                }
            )
        scored = {
            name: mean_ci95(model.score_tasks(*test.support, *test.query, learner=name))
            for name in model.weights_
        }
        strategy = model.meta_learner_.evaluate(model.meta_params_, test, config.num_inner_steps)[
            "loss"
        ][:, -1]
        scored["strategy"] = mean_ci95(np.asarray(strategy))
        results[family] = {
            "weights": model.weights_,
            "meta_learning_rates": model.inner_lr_,
            "kept": model.kept_,
            "held_out_mse": {k: {"mean": m, "ci95": c} for k, (m, c) in scored.items()},
            "summary": model.summary_,
        }
        rows.append(
            [family]
            + [f"{model.weights_[n]:.3f}" for n in model.weights_]
            + [format_mean_ci(*scored[k]) for k in ("strategy", *model.weights_)]
            + [model.kept_]
        )
    header = [
        "tasks",
        "weight mlp",
        "weight linear",
        "MSE strategy",
        "MSE mlp alone",
        "MSE linear alone",
        "kept",
    ]
    table = markdown_table(header, rows)
    with open(run.file("table.md"), "w") as f:
        f.write(table)
    print(
        f"\nHeld-out tasks ({config.test_tasks} per family, {config.shots} shots, "
        f"{config.num_inner_steps} inner step), "
        f"MSE mean ± 95% CI\n\n{table}"
    )
    return results
