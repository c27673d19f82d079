"""Few-shot Omniglot: train on one background set, test on alphabets it never saw.

Command:  jmeta run omniglot                       (prototypical networks)
          jmeta run omniglot methods=protonet,maml (adds MAML, one model per number of ways)
Runtime:  about 5 minutes on a 2-core laptop CPU for prototypical networks with the
          defaults; MAML (one model per number of ways) adds much more on CPU.
Expected: accuracy (mean ± 95% CI over 600 tasks) on the characters of the alphabets of
          ``images_background_small2`` that are not in ``images_background_small1``:
          5-way and 20-way, 1- and 5-shot, and within-alphabet 20-way 1-shot (harder: the
          distractors are characters of the same alphabet).

The network is conv4 with stride-2 convolutions (MAML's Omniglot form; faster to train on
CPU than the pooled form) on 28x28 images, trained on 90-degree rotations as new classes.
``execution`` names how XLA runs it (``jmeta.execution``): ``cpu-conv`` by default, tasks in
chunks of 2 and one jitted call per meta-step; ``gpu`` on a GPU. It changes no number.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jmeta import algorithms
from jmeta.config import MetaTraining
from jmeta.data import load_omniglot
from jmeta.data.omniglot import ClassImages
from jmeta.evaluate import evaluate, evaluation_tasks
from jmeta.execution import execution_preset
from jmeta.experiments._episodes import plot_episodes
from jmeta.models import conv4_learner
from jmeta.objective import make_meta_learner
from jmeta.protonet import make_protonet
from jmeta.runs import RunDir
from jmeta.sharding import check_devices, mesh_for
from jmeta.stats import format_mean_ci, markdown_table, mean_ci95
from jmeta.tasks import make_episode_sampler
from jmeta.training import train
from jmeta.validation import check_fields

SHARED = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "data", "omniglot"
)


@dataclasses.dataclass(frozen=True)
class Training(MetaTraining):
    """How ``train_model`` meta-trains: the fields that ``omniglot`` and ``omniglot-runs`` share.

    ``train_ways`` is the prototypical network's training episode width; a gradient-based
    method (MAML and the like) trains one model per number of ways it is tested at.
    """

    image_size: int = 28
    cache: bool = True
    filters: int = 64
    train_ways: int = 20
    train_shots: int = 5
    queries: int = 5
    num_steps: int = 2000
    meta_batch: int = 1
    outer_lr: float = 0.001
    maml_num_inner_steps: int = 1
    maml_inner_lr: float = 0.4
    maml_meta_batch: int = 8
    maml_num_steps: int = 600
    execution: str = "cpu-conv"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500

    def check(self) -> None:
        """Refuses a bad training field by name before any data is read or step compiled
        (a bad value otherwise surfaced after minutes of training, under an internal name)."""
        super().check()
        check_fields(
            self,
            positive_ints=(
                "image_size",
                "filters",
                "train_shots",
                "queries",
                "maml_num_inner_steps",
                "maml_meta_batch",
                "maml_num_steps",
            ),
            positive_floats=("maml_inner_lr",),
            at_least_two=("train_ways",),
        )
        execution_preset(self.execution)
        check_devices(self.devices, maml_meta_batch=self.maml_meta_batch)


@dataclasses.dataclass(frozen=True)
class Config(Training):
    background: str = os.path.join(SHARED, "images_background_small1.zip")
    evaluation: str = os.path.join(SHARED, "images_background_small2.zip")
    methods: tuple[str, ...] = ("protonet",)
    settings: tuple[str, ...] = ("5x1", "5x5", "20x1", "20x5")
    within_alphabet: bool = True
    eval_tasks: int = 600
    plot_episodes: int = 3


def parse_setting(text: str) -> tuple[int, int]:
    """``"5x1"`` as ``(ways, shots)``, or a ``ValueError`` naming ``settings``."""
    try:
        ways, shots = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"settings: {text!r} is not WAYSxSHOTS (for example 5x1)") from None
    if ways < 2 or shots < 1:
        raise ValueError(f"settings: {text!r} needs at least 2 ways and 1 shot")
    return ways, shots


def unseen_alphabets(background: ClassImages, evaluation: ClassImages) -> ClassImages:
    """The classes of ``evaluation`` whose alphabet is not in ``background``."""
    keep = [
        i
        for i, g in enumerate(evaluation.groups)
        if evaluation.group_names[g] not in background.group_names
    ]
    if not keep:
        raise ValueError("the evaluation set has no alphabet that the background set lacks")
    names = tuple(sorted({evaluation.group_names[evaluation.groups[i]] for i in keep}))
    return ClassImages(
        evaluation.images[keep],
        tuple(evaluation.class_names[i] for i in keep),
        np.array(
            [names.index(evaluation.group_names[evaluation.groups[i]]) for i in keep], np.int32
        ),
        names,
    )


def train_model(
    config: Training, run: RunDir, method: str, ways: int, data: ClassImages, progress: bool
):
    """Meta-trains ``method`` on ``data`` (stage ``METHOD-WAYSway`` of ``run``); returns
    ``(meta_learner, meta_params)``. A prototypical network ignores ``ways`` at test time."""
    key = jax.random.key(config.seed)
    shape = data.images.shape[2:]
    execution = execution_preset(config.execution)
    if method == "protonet":
        embedding = conv4_learner(
            key, shape, ways=0, filters=config.filters, strided=True, conv=execution.conv
        )
        meta_learner = make_protonet(embedding, ways, execution=execution)
        sampler = make_episode_sampler(
            data.images, ways, config.train_shots, config.queries, rotations=True
        )
        batch, steps = config.meta_batch, config.num_steps
    else:
        learner = conv4_learner(
            key, shape, ways=ways, filters=config.filters, strided=True, conv=execution.conv
        )
        meta_learner = make_meta_learner(
            learner,
            algorithms.algorithm_config(
                method,
                loss="ce",
                num_inner_steps=config.maml_num_inner_steps,
                inner_lr=config.maml_inner_lr,
            ),
            execution,
        )
        sampler = make_episode_sampler(
            data.images, ways, config.train_shots, config.queries, rotations=True
        )
        batch, steps = config.maml_meta_batch, config.maml_num_steps
    state = train(
        meta_learner,
        sampler,
        jax.random.fold_in(key, 1),
        steps,
        meta_batch=batch,
        outer_lr=config.outer_lr,
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        run=run,
        stage=f"{method}-{ways}way",
        progress=progress,
        mesh=mesh_for(config.devices),
    )
    return meta_learner, state.meta_params


def _evaluate(config, meta_learner, meta_params, data, ways, shots, groups=None, salt=0) -> dict:
    sampler = make_episode_sampler(data.images, ways, shots, config.queries, groups=groups)
    key = jax.random.fold_in(jax.random.key(config.seed + 10**6), ways * 1000 + shots * 10 + salt)
    tasks = evaluation_tasks(sampler, key, config.eval_tasks, chunk=100)
    accuracies = evaluate(meta_learner, meta_params, tasks, config.maml_num_inner_steps)[
        "accuracy"
    ][:, -1]
    mean, ci = mean_ci95(accuracies)
    return {"mean": mean, "ci95": ci}


def _plot(config, meta_learner, meta_params, data, path):
    def predict(task):
        adapted, _ = meta_learner.adapt(meta_params, task.support, config.maml_num_inner_steps)
        return np.argmax(
            np.asarray(meta_learner.predict(meta_params, adapted, task.query.x)), axis=-1
        )

    plot_episodes(
        predict,
        data.images,
        path,
        episodes=config.plot_episodes,
        key=jax.random.key(config.seed + 7),
        title="5-way 1-shot episodes on unseen alphabets: support (left), queries with predicted "
        "class",
    )


def check(config: Config) -> list[tuple[int, int]]:
    """Every field checked before the run folder is made or any data read; returns the
    (ways, shots) settings."""
    settings = [parse_setting(s) for s in config.settings]
    for method in config.methods:
        if method != "protonet":
            algorithms.algorithm_config(method)
    check_fields(config, positive_ints=("eval_tasks", "plot_episodes"))
    return settings


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    settings = check(config)
    background = load_omniglot(config.background, config.image_size, config.cache)
    evaluation = unseen_alphabets(
        background, load_omniglot(config.evaluation, config.image_size, config.cache)
    )
    rows, results, first = [], {}, None
    ways_needed = sorted({w for w, _ in settings} | ({20} if config.within_alphabet else set()))
    run.expect_stages(sum(1 if m == "protonet" else len(ways_needed) for m in config.methods))
    for method in config.methods:
        if method == "protonet":
            # One prototypical network serves any number of ways at test time.
            trained, meta_params = train_model(
                config, run, method, config.train_ways, background, progress
            )
            models = {w: (make_protonet(trained.learners[0], w), meta_params) for w in ways_needed}
        else:
            models = {
                w: train_model(config, run, method, w, background, progress) for w in ways_needed
            }
        first = first or (method, models[5 if 5 in models else ways_needed[0]])
        for ways, shots in settings:
            meta_learner, meta_params = models[ways]
            results[f"{method}/{ways}-way {shots}-shot"] = run.stage(
                f"eval-{method}-{ways}x{shots}",
                lambda: _evaluate(config, meta_learner, meta_params, evaluation, ways, shots),
            )
        if config.within_alphabet:
            meta_learner, meta_params = models[20]
            results[f"{method}/20-way 1-shot within alphabet"] = run.stage(
                f"eval-{method}-within",
                lambda: _evaluate(
                    config,
                    meta_learner,
                    meta_params,
                    evaluation,
                    20,
                    1,
                    groups=evaluation.groups,
                    salt=1,
                ),
            )
        rows.append(
            [method]
            + [
                format_mean_ci(results[k]["mean"], results[k]["ci95"])
                for k in results
                if k.startswith(method + "/")
            ]
        )
    columns = [f"{w}-way {s}-shot" for w, s in settings] + (
        ["20-way 1-shot within alphabet"] if config.within_alphabet else []
    )
    table = markdown_table(["method"] + columns, rows)
    with open(run.file("table.md"), "w") as f:
        f.write(table)
    method, (meta_learner, meta_params) = first
    _plot(config, meta_learner, meta_params, evaluation, run.file("episodes.png"))
    print(
        f"\nOmniglot: trained on {len(background.class_names)} characters of "
        f"{', '.join(background.group_names)}; "
        f"tested on {len(evaluation.class_names)} characters of unseen "
        f"{', '.join(evaluation.group_names)} "
        f"(accuracy, mean ± 95% CI over {config.eval_tasks} tasks)\n\n{table}"
    )
    return {
        "accuracy": results,
        "train_alphabets": background.group_names,
        "test_alphabets": evaluation.group_names,
    }
