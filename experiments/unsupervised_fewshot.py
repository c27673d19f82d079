"""Unsupervised meta-learning: meta-train on pseudo-labelled tasks, test on real few-shot tasks.

Command:  jmeta run unsupervised-fewshot                      (Omniglot, held-out alphabets)
          jmeta run unsupervised-fewshot eval=PATH            (fit on all 964 background
                                                               characters, test on PATH's)
          jmeta run unsupervised-fewshot dataset=digits
          jmeta run unsupervised-fewshot dataset=mnist mnist=DIR
Runtime:  about 10 minutes on a 2-core laptop CPU (Omniglot); digits about 2 minutes.
Expected: accuracy (mean ± 95% CI over ``eval_tasks`` tasks) of jmeta's unsupervised
          meta-learner, beside the label-free baselines CACTUs reports (nearest neighbour
          and logistic regression on the PCA embedding, nearest neighbour on pixels), the
          same network trained from scratch on each task and the same network meta-trained
          with the fit set's true labels (the supervised ceiling), and a table of the
          rounds. Omniglot: about 89% 5-way 1-shot and 70% 20-way 1-shot (PCA + nearest
          neighbour about 54% and 33%); digits: about 78% 10-way 1-shot (65%).

Data. ``omniglot``: ``images_background.npz`` (964 characters × 20 drawers, 28x28 by area
averaging); without ``eval`` the meta-learner fits, with no label, on rows below
``holdout_from`` (default 708: 708 characters) and is tested on the characters of the
whole alphabets above it (256), which it never saw. ``digits``: scikit-learn's 1,797 digits,
a random two thirds to fit and the rest to test, 10-way. ``mnist``: the IDX files in ``mnist``
(``train-images-idx3-ubyte[.gz]`` and labels); the first half of the images fits, the
second half tests, 10-way.

Labels are read only to build the test tasks, the supervised ceiling and the pseudo-label
scores in the history (``eval_labels``), never by the unsupervised meta-learner.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta.data.classes import class_indexed, read_idx
from jmeta.data.omniglot import ClassImages, load_omniglot_arrays
from jmeta.evaluate import evaluate
from jmeta.execution import Execution
from jmeta.experiments._episodes import plot_episodes
from jmeta.experiments.omniglot import parse_setting
from jmeta.losses import cross_entropy
from jmeta.models import conv4_learner, with_linear_head
from jmeta.objective import MetaLearnerConfig, make_meta_learner
from jmeta.optim import minimise
from jmeta.protonet import make_protonet
from jmeta.runs import RunDir
from jmeta.sharding import check_devices, mesh_for
from jmeta.stats import format_mean_ci, markdown_table, mean_ci95
from jmeta.tasks import Task, make_episode_sampler, sample_tasks
from jmeta.training import train
from jmeta.unsupervised.meta_learner import UnsupervisedMetaLearner, plot_history
from jmeta.unsupervised.pca import pca_transform
from jmeta.unsupervised.tasks import make_partitions, make_pseudo_task_sampler
from jmeta.validation import check_choice, check_fields

SHARED = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "data", "omniglot"
)
DATASETS = ("omniglot", "digits", "mnist")
DEFAULT_SETTINGS = {
    "omniglot": ("5x1", "5x5", "20x1", "20x5"),
    "digits": ("10x1", "10x5"),
    "mnist": ("10x1", "10x5", "10x10"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "omniglot"
    omniglot: str = os.path.join(SHARED, "images_background.npz")
    eval: str = ""
    holdout_from: int = 708
    cache: bool = True  # the resized Omniglot images beside the .npz (load_omniglot_arrays)
    mnist: str = ""
    # The unsupervised meta-learner (UnsupervisedMetaLearner's fields).
    algorithm: str = "protonet"
    n_components: int = 32
    n_clusters: int = 0
    n_partitions: int = 8
    ways: int = 5
    shots: int = 1
    queries: int = 5
    rounds: int = 5
    steps_per_round: int = 600
    meta_batch: int = 4
    outer_lr: float = 0.001
    threshold: float = 0.1
    max_shift: int = -1
    filters: int = 64
    # Evaluation and baselines.
    settings: tuple[str, ...] = ()
    eval_queries: int = 5
    eval_tasks: int = 1000
    round_tasks: int = 300
    scratch_tasks: int = 200
    scratch_steps: int = 20
    scratch_lr: float = 0.1
    supervised: bool = True
    plot_episodes: int = 3
    seed: int = 0
    # 1: one device; n: meta-batches, k-means and PCA over a mesh of n devices; 0: all.
    devices: int = 1


def check(config: Config) -> list[tuple[int, int]]:
    """Every field checked before any data is read; returns the (ways, shots) settings."""
    check_choice("dataset", config.dataset, DATASETS)
    check_fields(
        config,
        positive_ints=(
            "n_components",
            "n_partitions",
            "shots",
            "queries",
            "rounds",
            "steps_per_round",
            "meta_batch",
            "filters",
            "eval_queries",
            "eval_tasks",
            "round_tasks",
            "scratch_tasks",
            "scratch_steps",
            "plot_episodes",
        ),
        non_negative_ints=("n_clusters", "holdout_from"),
        positive_floats=("outer_lr", "scratch_lr"),
        at_least_two=("ways",),
    )
    check_devices(config.devices, meta_batch=config.meta_batch)
    if config.dataset == "mnist" and not config.mnist:
        raise ValueError("dataset=mnist needs mnist=DIR, the folder of MNIST's IDX files")
    return [parse_setting(s) for s in (config.settings or DEFAULT_SETTINGS[config.dataset])]


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(f"mnist={directory}: no {stem} or {stem}.gz there")


def load_split(config: Config) -> tuple[np.ndarray, np.ndarray, ClassImages, str]:
    """``(fit images (n, H, W, 1), their labels (scoring only), test classes, description)``."""
    if config.dataset == "omniglot":
        if config.eval:
            background = load_omniglot_arrays(config.omniglot, cache=config.cache)
            test = load_omniglot_arrays(config.eval, cache=config.cache)
            description = (
                f"fit on all {len(background.class_names)} characters, tested on {config.eval}"
            )
        else:
            # One read of the file: the fit and test characters are two slices of it.
            every = load_omniglot_arrays(config.omniglot, cache=config.cache)
            total = len(every.class_names)
            if not 0 < config.holdout_from < total:
                raise ValueError(f"holdout_from must be in (0, {total}), got {config.holdout_from}")
            background, test = (
                ClassImages(
                    every.images[rows],
                    every.class_names[rows],
                    every.groups[rows],
                    every.group_names,
                )
                for rows in (slice(None, config.holdout_from), slice(config.holdout_from, None))
            )
            description = (
                f"fit on characters 0-{config.holdout_from - 1}, tested on the "
                f"{total - config.holdout_from} characters of the alphabets from row "
                f"{config.holdout_from}"
            )
        classes, drawers = background.images.shape[:2]
        return (
            background.images.reshape((classes * drawers,) + background.images.shape[2:]),
            np.repeat(np.arange(classes), drawers),
            test,
            description,
        )
    if config.dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = (digits.images / 16.0).astype(np.float32)[..., None], digits.target
        order = np.random.default_rng(config.seed).permutation(len(images))
        cut = 2 * len(images) // 3
        return (
            images[order[:cut]],
            labels[order[:cut]],
            class_indexed(images[order[cut:]], labels[order[cut:]]),
            f"fit on {cut} digits, tested on the other {len(images) - cut}",
        )
    images = _find(config.mnist, "train-images-idx3-ubyte")
    labels = _find(config.mnist, "train-labels-idx1-ubyte")

    x, y = (read_idx(images) / 255.0).astype(np.float32)[..., None], read_idx(labels)
    half = len(x) // 2
    return (
        x[:half],
        y[:half],
        class_indexed(x[half:], y[half:]),
        f"fit on MNIST images 0-{half - 1}, tested on the rest",
    )


def evaluation_tasks(
    config: Config, test: ClassImages, ways: int, shots: int, num_tasks: int, salt: int = 0
) -> Task:
    """The fixed evaluation tasks of one setting (the same for every method)."""
    key = jax.random.fold_in(jax.random.key(config.seed + 10**6), ways * 1000 + shots * 10 + salt)
    return sample_tasks(
        make_episode_sampler(test.images, ways, shots, config.eval_queries), key, num_tasks
    )


# ---- baselines ---------------------------------------------------------------------


def _flat(x):
    return x.reshape(x.shape[:-3] + (-1,)) if x.ndim >= 4 else x


@jax.jit
def _nearest_neighbour(support_x, support_y, query_x):
    distances = jnp.sum(jnp.square(query_x[:, None, :] - support_x[None, :, :]), axis=-1)
    return support_y[jnp.argmin(distances, axis=1)]


def _logistic_regression(ways: int):
    @jax.jit
    def predict(support_x, support_y, query_x):
        # Softmax regression with a little L2, 100 Adam steps; the features are divided by the
        # support set's mean norm (one scalar: per-feature scales from a few shots are noise).
        scale = jnp.mean(jnp.linalg.norm(support_x, axis=1)) + 1e-6
        xs, xq = support_x / scale, query_x / scale
        params = (jnp.zeros((xs.shape[1], ways)), jnp.zeros((ways,)))
        loss = lambda p: (
            cross_entropy(xs @ p[0] + p[1][None, :], support_y) + 1e-3 * jnp.sum(jnp.square(p[0]))
        )
        weights, bias = minimise(loss, params, optax.adam(0.1), 100)[0]
        return jnp.argmax(xq @ weights + bias[None, :], axis=-1)

    return predict


def baseline_accuracies(method: str, tasks: Task, ways: int, projection=None) -> np.ndarray:
    """Per-task query accuracy of a label-free baseline: ``pixels-nn``, ``pca-nn`` or
    ``pca-logreg``."""
    support_x, query_x = _flat(tasks.support.x), _flat(tasks.query.x)
    if method.startswith("pca"):
        project = jax.vmap(lambda x: pca_transform(projection, x))
        support_x, query_x = project(support_x), project(query_x)
    predict = _nearest_neighbour if method.endswith("nn") else _logistic_regression(ways)
    predicted = jax.vmap(predict)(support_x, tasks.support.y, query_x)
    return np.asarray(jnp.mean(predicted == tasks.query.y, axis=1))


def scratch_accuracies(
    config: Config, model: UnsupervisedMetaLearner, tasks: Task, ways: int
) -> np.ndarray:
    """The same network, randomly initialised, trained on each task's support set alone
    (``scratch_steps`` steps of gradient descent at ``scratch_lr``)."""
    learner = with_linear_head(model.learner_, tasks.support.x[0, :2], ways)
    scratch = make_meta_learner(
        learner,
        MetaLearnerConfig(
            loss="ce", inner_lr=config.scratch_lr, num_inner_steps=config.scratch_steps
        ),
        Execution(peel_first_step=False),
    )
    return evaluate(scratch, scratch.init(), tasks, config.scratch_steps, chunk=50)["accuracy"][
        :, -1
    ]


def supervised_ceiling(
    config: Config,
    model: UnsupervisedMetaLearner,
    images: np.ndarray,
    labels: np.ndarray,
    run: RunDir,
    progress: bool,
):
    """The same network meta-trained as a prototypical network with the fit set's true labels:
    the same sampler, augmentation and number of steps, the true classes as the one partition."""
    classes = np.unique(labels, return_inverse=True)[1]
    partitions = make_partitions(
        classes[None, :], int(classes.max()) + 1, config.shots + config.queries
    )
    sampler = make_pseudo_task_sampler(
        images, partitions, config.ways, config.shots, config.queries, max_shift=model.shift_
    )
    meta_learner = make_protonet(model.learner_, config.ways)
    steps = config.rounds * config.steps_per_round
    log_every = min(100, steps)
    state = train(
        meta_learner,
        sampler,
        jax.random.key(config.seed + 3),
        steps,
        meta_batch=config.meta_batch,
        outer_lr=config.outer_lr,
        log_every=log_every,
        checkpoint_every=log_every * (steps // log_every),
        run=run,
        stage="supervised",
        progress=progress,
        mesh=mesh_for(config.devices),
    )
    return state.meta_params


def _protonet_accuracies(
    model: UnsupervisedMetaLearner, meta_params, tasks: Task, ways: int
) -> np.ndarray:
    return evaluate(make_protonet(model.learner_, ways), meta_params, tasks)["accuracy"][:, -1]


def _summary(accuracies: np.ndarray) -> dict:
    mean, ci = mean_ci95(accuracies)
    return {"mean": mean, "ci95": ci, "tasks": int(accuracies.size)}


# ---- main --------------------------------------------------------------------------


def make_model(config: Config, image_shape: tuple, progress: bool) -> UnsupervisedMetaLearner:
    """The unsupervised meta-learner of ``config`` over conv4 (stride-2 convolutions, ``filters``
    channels)."""
    learner = conv4_learner(
        jax.random.key(config.seed), image_shape, ways=0, filters=config.filters, strided=True
    )
    return UnsupervisedMetaLearner(
        learner,
        algorithm=config.algorithm,
        n_components=config.n_components,
        n_clusters=config.n_clusters or None,
        n_partitions=config.n_partitions,
        ways=config.ways,
        shots=config.shots,
        queries=config.queries,
        rounds=config.rounds,
        steps_per_round=config.steps_per_round,
        meta_batch=config.meta_batch,
        outer_lr=config.outer_lr,
        threshold=config.threshold,
        max_shift=None if config.max_shift < 0 else config.max_shift,
        mesh=mesh_for(config.devices),
        seed=config.seed,
        progress=progress,
    )


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    settings = check(config)
    started = time.perf_counter()
    images, labels, test, description = load_split(config)
    load_s = time.perf_counter() - started
    if max(w for w, _ in settings) > test.images.shape[0]:
        raise ValueError(
            f"settings ask for {max(w for w, _ in settings)} ways but the test set has "
            f"{test.images.shape[0]} classes"
        )
    model = make_model(config, images.shape[1:], progress)
    round_ways, round_shots = settings[0]
    round_tasks = evaluation_tasks(
        config, test, round_ways, round_shots, config.round_tasks, salt=1
    )
    # At most one training stage per self-training round (it may stop early), and the
    # supervised comparison's.
    run.expect_stages(config.rounds + bool(config.supervised))
    started = time.perf_counter()
    model.fit(images, eval_labels=labels, eval_tasks=round_tasks, run=run)
    fit_s = time.perf_counter() - started

    started = time.perf_counter()
    results, rows = {}, []
    methods = {"jmeta (unsupervised)": lambda tasks, ways: model.score_tasks(tasks)}
    if config.supervised:
        ceiling = supervised_ceiling(config, model, images, labels, run, progress)
        methods["supervised ceiling (true labels)"] = lambda tasks, ways: _protonet_accuracies(
            model, ceiling, tasks, ways
        )
    supervised_s = time.perf_counter() - started
    started = time.perf_counter()
    projection = model.projection_
    baselines = {
        "PCA + nearest neighbour": lambda tasks, ways: baseline_accuracies(
            "pca-nn", tasks, ways, projection
        ),
        "PCA + logistic regression": lambda tasks, ways: baseline_accuracies(
            "pca-logreg", tasks, ways, projection
        ),
        "pixels + nearest neighbour": lambda tasks, ways: baseline_accuracies(
            "pixels-nn", tasks, ways
        ),
    }
    for ways, shots in settings:
        tasks = evaluation_tasks(config, test, ways, shots, config.eval_tasks)
        name = f"{ways}-way {shots}-shot"
        for method, score in {**methods, **baselines}.items():
            results.setdefault(method, {})[name] = run.stage(
                f"eval-{method}-{name}".replace(" ", "_"), lambda: _summary(score(tasks, ways))
            )
        few = jax.tree_util.tree_map(lambda leaf: leaf[: config.scratch_tasks], tasks)
        results.setdefault("same network from scratch", {})[name] = run.stage(
            f"eval-scratch-{name}".replace(" ", "_"),
            lambda: _summary(scratch_accuracies(config, model, few, ways)),
        )
    eval_s = time.perf_counter() - started

    columns = [f"{w}-way {s}-shot" for w, s in settings]
    for method, by_setting in results.items():
        rows.append(
            [method]
            + [
                format_mean_ci(100 * by_setting[c]["mean"], 100 * by_setting[c]["ci95"], 1)
                for c in columns
            ]
        )
    table = markdown_table(["method"] + columns, rows)
    history_header = [
        "round",
        "held-out acc",
        "pseudo-task acc",
        "mask rate",
        "labels changed",
        "NMI",
        "T",
        "ARI",
        "label acc",
        "train s",
    ]
    history_rows = [
        [r["round"]]
        + [
            f"{r[k]:.3f}" if k in r else ""
            for k in (
                "eval_accuracy",
                "pseudo_accuracy",
                "mask_rate",
                "labels_changed",
                "nmi",
                "temperature",
                "ari",
                "label_accuracy",
            )
        ]
        + [f"{r.get('train_s', 0):.0f}"]
        for r in model.history_
    ]
    history_table = markdown_table(history_header, history_rows)
    with open(run.file("table.md"), "w") as f:
        f.write(table + "\n" + history_table)
    plot_history(model.history_, run.file("history.png"))
    plot_episodes(
        lambda task: model.predict(task.query.x, model.adapt(task.support.x, task.support.y)),
        test.images,
        run.file("episodes.png"),
        episodes=config.plot_episodes,
        key=jax.random.key(config.seed + 7),
        title="5-way 1-shot test episodes after unsupervised meta-training: support (left), "
        "predictions",
        ways=min(5, test.images.shape[0]),
    )
    times = {
        "load_s": load_s,
        "project_and_cluster_s": sum(r.get("cluster_s", 0.0) for r in model.history_),
        "embed_s": sum(r.get("embed_s", 0.0) for r in model.history_),
        "meta_train_s": sum(r.get("train_s", 0.0) for r in model.history_),
        "fit_s": fit_s,
        "supervised_ceiling_s": supervised_s,
        "eval_and_baselines_s": eval_s,
    }
    print(
        f"\n{config.dataset}: {description}; query accuracy % (mean ± 95% CI over "
        f"{config.eval_tasks} tasks; "
        f"from scratch over {config.scratch_tasks})\n\n{table}\nper round ({round_ways}-way "
        f"{round_shots}-shot "
        f"held-out accuracy over {config.round_tasks} tasks)\n\n{history_table}\n"
        + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    )
    return {
        "accuracy": results,
        "history": model.history_,
        "times": times,
        "description": description,
        "n_clusters": int(np.asarray(model.partitions_.counts).shape[1]),
    }
