"""Few-shot Omniglot at full scale: train on the background set, test on characters never seen.

Command:  jmeta run omniglot                       (prototypical networks)
          jmeta run omniglot eval=PATH             (all 964 characters train; PATH's test)
          jmeta run omniglot methods=protonet,maml (adds MAML, one model per number of ways)
          jmeta run omniglot methods=matching,r2d2,finetune   (the other trained-once methods)
Runtime:  about 12 minutes on a 2-core laptop CPU for prototypical networks with the
          defaults; 17 to 35 minutes each for matching networks, R2D2 and fine-tuning;
          MAML or BOIL about 18 minutes (a 5-way and a 20-way model), MAML++ about 35,
          iMAML far more (its measured times are in experiments/README.md).
Expected: accuracy (mean ± 95% CI over 1,000 tasks) on the 256 characters of rows 708-963
          of ``images_background.npz`` (the whole alphabets from Alphabet_of_the_Magi on),
          held out of training: about 97% 5-way 1-shot and 90% 20-way 1-shot, 5-shot
          above both (98.5% and 93.6% with ``strided=false``, about 68 minutes), and
          20-way 1-shot within one alphabet (Alphabet_of_the_Magi or
          Sanskrit: the distractors are characters of the same alphabet); beside them
          the published MAML and prototypical-network figures, with what differs in
          their protocol.

Data. ``background`` is ``images_background.npz`` (964 characters of 30 alphabets x 20
drawers; also any official zip or folder). Without ``eval`` its rows from
``holdout_from`` on are held out (a cut between whole alphabets, as the published splits
separate alphabets); with ``eval=PATH`` (``images_evaluation.npz`` or any set in one of
those layouts) every background character trains and PATH's characters are tested. The
file names no alphabets, so within-alphabet tasks use the blocks of rows ``alphabets``
names (``eval_alphabets`` for an ``eval`` file); a zip's folders name its own.

The network is conv4 with stride-2 convolutions (MAML's Omniglot form; faster to train on
CPU than the pooled form) on 28x28 images, trained on 90-degree rotations as new classes;
the prototypical network on 60-way 5-shot episodes, Adam at 1e-3 halved every 2,000 steps
(Snell et al.'s schedule). Matching networks and R2D2's ridge head train the same way; the
fine-tuning baseline sees as many images per step, as plain batches of the 2,832 rotated
training characters, and fits a linear head on each test task's support set. These four
train once and are tested at any number of ways (``ANY_WAYS``); a gradient-based method
(MAML, iMAML, MAML++, BOIL, ...) trains one model per number of ways. ``execution`` names
how XLA runs it (``jmeta.execution``): ``cpu-conv`` by default, tasks in chunks of 2 and one
jitted call per meta-step; ``gpu`` on a GPU. It changes no number.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import optax

from jmeta import algorithms
from jmeta.config import MetaTraining
from jmeta.data import load_omniglot
from jmeta.data.omniglot import ClassImages, parse_alphabets, select_alphabets
from jmeta.evaluate import evaluate, evaluation_tasks
from jmeta.execution import CPU, Execution, execution_preset
from jmeta.experiments._episodes import plot_episodes
from jmeta.finetune import make_finetune
from jmeta.matching import make_matching_network
from jmeta.models import Learner, conv4_learner
from jmeta.objective import MetaLearner, make_meta_learner
from jmeta.outer import default_optimizer
from jmeta.protonet import make_protonet
from jmeta.ridge import make_ridge_head
from jmeta.runs import RunDir
from jmeta.sharding import check_devices, mesh_for
from jmeta.stats import format_mean_ci, markdown_table, mean_ci95
from jmeta.tasks import make_batch_sampler, make_episode_sampler
from jmeta.training import train
from jmeta.validation import check_fields

SHARED = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        os.pardir,
        os.pardir,
        "shared",
        "data",
        "omniglot",
    )
)


# The rows of images_background.npz that the README beside the data names (the file names no
# alphabet). All but Alphabet_of_the_Magi are in the two small zips, whose file names
# give their rows: tests/test_experiment_omniglot.py checks those blocks against them.
NAMED_ALPHABETS = (
    "Balinese=107-130",
    "Early_Aramaic=250-271",
    "Greek=393-416",
    "Japanese_(katakana)=595-641",
    "Korean=642-681",
    "Latin=682-707",
    "Alphabet_of_the_Magi=708-727",
    "Sanskrit=850-891",
    "Tagalog=892-908",
)

# Closed-form heads over a conv4 embedding, trained on wide episodes like Snell et al.'s.
HEADS = {"protonet": make_protonet, "matching": make_matching_network, "r2d2": make_ridge_head}
# Methods trained once and tested at any number of ways: the heads and fine-tuning.
ANY_WAYS = (*HEADS, "finetune")


@dataclasses.dataclass(frozen=True)
class Training(MetaTraining):
    """How ``train_model`` meta-trains: the fields that ``omniglot`` and ``omniglot-runs`` share.

    ``train_ways`` is the training episode width of the methods trained once
    (``ANY_WAYS``: prototypical and matching networks, R2D2; fine-tuning sees batches of
    as many images); a gradient-based method (MAML and the like) trains one model per
    number of ways it is tested at, with the ``maml_*`` fields.
    ``holdout_from``: with nothing else to test on, the background's characters from this
    row on are held out of training (default 708: the 256 characters of the whole
    alphabets from Alphabet_of_the_Magi on). ``alphabets`` names blocks of background
    ``.npz`` rows, ``NAME=FIRST-LAST``, for within-alphabet tasks and runs.
    ``halve_lr_every``: the outer rate of a method trained once halves every this many
    steps (Snell et al.'s schedule; 0 keeps it constant); MAML's stays constant, as in Finn
    et al. (MAML++ anneals its own by a cosine).
    ``strided=false`` gives conv4 its max-pooled form (Snell et al.'s): better features,
    about 3.4x the time per step on CPU.
    """

    holdout_from: int = 708
    alphabets: tuple[str, ...] = NAMED_ALPHABETS
    image_size: int = 28
    cache: bool = True
    filters: int = 64
    strided: bool = True
    train_ways: int = 60
    train_shots: int = 5
    queries: int = 5
    num_steps: int = 4000
    meta_batch: int = 1
    outer_lr: float = 0.001
    halve_lr_every: int = 2000
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
                "holdout_from",
            ),
            non_negative_ints=("halve_lr_every",),
            positive_floats=("maml_inner_lr",),
            at_least_two=("train_ways",),
        )
        execution_preset(self.execution)
        check_devices(self.devices, maml_meta_batch=self.maml_meta_batch)
        parse_alphabets(self.alphabets)


# Published accuracies, each on Vinyals et al.'s split: 1,200 characters of background and
# evaluation alphabets mixed for training (with rotations), the other 423 for testing.
# Matching networks: Vinyals et al.'s cosine variant without fine-tuning; iMAML: its
# Hessian-free form (lambda = 2, 5 CG steps); MAML++: Antoniou et al.'s Table 1.
PUBLISHED = {
    "MAML (Finn et al. 2017)": {"5x1": 0.987, "5x5": 0.999, "20x1": 0.958, "20x5": 0.989},
    "protonet (Snell et al. 2017)": {"5x1": 0.988, "5x5": 0.997, "20x1": 0.960, "20x5": 0.989},
    "matching (Vinyals et al. 2016)": {"5x1": 0.981, "5x5": 0.989, "20x1": 0.938, "20x5": 0.985},
    "iMAML (Rajeswaran et al. 2019)": {"5x1": 0.995, "5x5": 0.9974, "20x1": 0.9618, "20x5": 0.9914},
    "MAML++ (Antoniou et al. 2019)": {"5x1": 0.9947, "5x5": 0.9985, "20x1": 0.9765, "20x5": 0.9933},
}


@dataclasses.dataclass(frozen=True)
class Config(Training):
    """``background`` trains; without ``eval`` its rows from ``holdout_from`` on are held out
    and tested (whole alphabets), with ``eval`` every background character trains and
    ``eval``'s characters are tested. ``alphabets`` names blocks of ``.npz`` rows of the
    background (for within-alphabet tasks), ``eval_alphabets`` those of an ``eval`` ``.npz``."""

    background: str = os.path.join(SHARED, "images_background.npz")
    eval: str = ""
    eval_alphabets: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("protonet",)
    settings: tuple[str, ...] = ("5x1", "5x5", "20x1", "20x5")
    within_alphabet: bool = True
    eval_tasks: int = 1000
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


def is_arrays(path: str) -> bool:
    """Whether ``path`` is an ``.npz`` of the whole set (no alphabet names) rather than a zip
    or folder of ``alphabet/character/*.png``."""
    return path.lower().endswith(".npz")


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
        None if evaluation.numbers is None else evaluation.numbers[keep],
    )


def held_out(data: ClassImages, holdout_from: int) -> tuple[ClassImages, ClassImages]:
    """``data``'s classes before ``holdout_from`` and from it on (a cut between rows, so
    between alphabets where the cut falls at an alphabet's first row)."""
    total = len(data.class_names)
    if not 0 < holdout_from < total:
        raise ValueError(
            f"holdout_from must be in (0, {total}) (the background has {total} characters), got "
            f"{holdout_from}; or give another set to test on (eval=PATH, or runs=PATH for "
            "omniglot-runs)"
        )
    return tuple(
        data._replace(
            images=data.images[rows],
            class_names=data.class_names[rows],
            groups=data.groups[rows],
            numbers=None if data.numbers is None else data.numbers[rows],
        )
        for rows in (slice(None, holdout_from), slice(holdout_from, None))
    )


def describe(data: ClassImages) -> str:
    """``"708 characters (rows 0-707)"`` for an ``.npz`` set, the alphabets for a zip."""
    count = len(data.class_names)
    if data.numbers is not None and len(data.group_names) == 1:
        return f"{count} characters (rows {data.numbers.min() - 1}-{data.numbers.max() - 1})"
    return f"{count} characters of {', '.join(data.group_names)}"


def load_split(config: Config) -> tuple[ClassImages, ClassImages, ClassImages | None]:
    """``(training classes, test classes, test classes grouped by alphabet or None)``.

    Without ``eval`` the background's rows from ``holdout_from`` on are the test classes;
    with it every background class trains and a zip ``eval``'s alphabets that the
    background also holds are dropped (the two small sets share Greek and Latin).
    """
    background = load_omniglot(config.background, config.image_size, config.cache)
    if not config.eval:
        train_set, test_set = held_out(background, config.holdout_from)
        blocks = config.alphabets if is_arrays(config.background) else None
    else:
        if os.path.abspath(config.eval) == os.path.abspath(config.background):
            raise ValueError(f"eval: {config.eval} is the background set itself")
        train_set = background
        test_set = load_omniglot(config.eval, config.image_size, config.cache)
        if not (is_arrays(config.eval) or is_arrays(config.background)):
            test_set = unseen_alphabets(background, test_set)
        blocks = config.eval_alphabets if is_arrays(config.eval) else None
    return train_set, test_set, by_alphabet(test_set, blocks)


def by_alphabet(data: ClassImages, blocks: tuple[str, ...] | None) -> ClassImages | None:
    """``data`` grouped by alphabet: a zip's own alphabets (``blocks`` is None), an
    ``.npz``'s named blocks of rows, or None when no named block lies in ``data``."""
    if blocks is None:
        return data
    named = parse_alphabets(blocks)
    rows = np.asarray(data.numbers) - 1
    if not any(((rows >= a) & (rows <= b)).any() for a, b in named.values()):
        return None
    return select_alphabets(data, named)


def training_sampler(config: Training, method: str, ways: int, data: ClassImages):
    """Training episodes of ``ways`` classes drawn from ``data`` only, every character's
    three 90-degree rotations as three more classes; for fine-tuning, two batches of half
    as many images as an episode holds, labelled with their (rotated) character."""
    if method == "finetune":
        batch = ways * (config.train_shots + config.queries) // 2
        return make_batch_sampler(data.images, batch, rotations=True)
    return make_episode_sampler(
        data.images, ways, config.train_shots, config.queries, rotations=True
    )


def for_ways(
    method: str,
    embedding: Learner,
    ways: int,
    num_classes: int | None = None,
    execution: Execution = CPU,
) -> MetaLearner:
    """The ``ways``-way form of a method of ``ANY_WAYS`` over ``embedding`` (trained or not);
    ``num_classes`` is fine-tuning's number of pretraining classes."""
    if method == "finetune":
        return make_finetune(embedding, ways, num_classes, execution=execution)
    return HEADS[method](embedding, ways, execution=execution)


def make_model(
    config: Training,
    method: str,
    ways: int,
    shape: tuple,
    key: jax.Array,
    num_classes: int | None = None,
):
    """The untrained ``method`` on conv4 (``strided``: stride-2 form) for images of ``shape``:
    a method of ``ANY_WAYS`` over the embedding, or a gradient-based learner with a ``ways``
    head."""
    execution = execution_preset(config.execution)
    if method in ANY_WAYS:
        embedding = conv4_learner(
            key, shape, ways=0, filters=config.filters, strided=config.strided, conv=execution.conv
        )
        return for_ways(method, embedding, ways, num_classes, execution)
    learner = conv4_learner(
        key, shape, ways=ways, filters=config.filters, strided=config.strided, conv=execution.conv
    )
    return make_meta_learner(
        learner,
        algorithms.algorithm_config(
            method,
            loss="ce",
            num_inner_steps=config.maml_num_inner_steps,
            inner_lr=config.maml_inner_lr,
        ),
        execution,
    )


def outer_optimizer(config: Training, method: str):
    """Adam at ``outer_lr``; for a method of ``ANY_WAYS`` halved every ``halve_lr_every``
    steps (Snell et al.'s schedule), for MAML and the like constant (Finn et al.'s)."""
    if method not in ANY_WAYS or not config.halve_lr_every:
        return default_optimizer(config.outer_lr)
    return default_optimizer(
        optax.exponential_decay(config.outer_lr, config.halve_lr_every, 0.5, staircase=True)
    )


def train_model(
    config: Training, run: RunDir, method: str, ways: int, data: ClassImages, progress: bool
):
    """Meta-trains ``method`` on ``data`` (stage ``METHOD-WAYSway`` of ``run``); returns
    ``(meta_learner, meta_params)``. A method of ``ANY_WAYS`` is rebuilt for other ways at
    test time (``for_ways``)."""
    key = jax.random.key(config.seed)
    meta_learner = make_model(
        config, method, ways, data.images.shape[2:], key, num_classes=rotated_classes(data)
    )
    if method in ANY_WAYS:
        batch, steps = config.meta_batch, config.num_steps
    else:
        batch, steps = config.maml_meta_batch, config.maml_num_steps
    state = train(
        meta_learner,
        training_sampler(config, method, ways, data),
        jax.random.fold_in(key, 1),
        steps,
        meta_batch=batch,
        optimizer=outer_optimizer(config, method),
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        run=run,
        stage=f"{method}-{ways}way",
        progress=progress,
        mesh=mesh_for(config.devices),
    )
    return meta_learner, state.meta_params


def rotated_classes(data: ClassImages) -> int:
    """Training classes with rotations: each character and its three quarter turns."""
    return 4 * len(data.class_names)


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
        title="5-way 1-shot episodes on characters never seen: support (left), queries with "
        "predicted class",
    )


def check(config: Config) -> list[tuple[int, int]]:
    """Every field checked before the run folder is made or any data read; returns the
    (ways, shots) settings."""
    settings = [parse_setting(s) for s in config.settings]
    for method in config.methods:
        if method not in ANY_WAYS and method not in algorithms.ALGORITHMS:
            raise ValueError(
                f"methods: unknown method {method!r}; expected one of "
                f"{', '.join(ANY_WAYS + tuple(algorithms.ALGORITHMS))}"
            )
    check_fields(config, positive_ints=("eval_tasks", "plot_episodes"))
    return settings


def within_alphabet_set(
    config: Config, grouped: ClassImages | None
) -> tuple[ClassImages | None, str]:
    """The test classes for within-alphabet 20-way tasks, or None and the reason there are
    none (said on the terminal and in the results, never dropped silently)."""
    if not config.within_alphabet:
        return None, "within_alphabet=false"
    if grouped is None:
        field = "eval_alphabets" if config.eval else "alphabets"
        return None, f"no alphabet named by {field} lies in the test characters"
    sizes = np.bincount(grouped.groups, minlength=len(grouped.group_names))
    if sizes.max() < 20:
        return None, "no test alphabet has 20 characters: " + ", ".join(
            f"{name} {size}" for name, size in zip(grouped.group_names, sizes)
        )
    eligible = [name for name, size in zip(grouped.group_names, sizes) if size >= 20]
    return grouped, f"20-way tasks within {', '.join(eligible)}"


def published_rows(settings: list[tuple[int, int]], columns: int) -> list[list[str]]:
    """The published figures under jmeta's, ``-`` where a paper has no such column."""
    return [
        [f"{name}, published"]
        + [f"{figures[f'{w}x{s}']:.3f}" if f"{w}x{s}" in figures else "-" for w, s in settings]
        + ["-"] * (columns - len(settings))
        for name, figures in PUBLISHED.items()
    ]


def protocol_note(config: Config, train_set: ClassImages, test_set: ClassImages) -> str:
    """What jmeta's numbers are, against what the published ones are."""
    source = os.path.basename(config.background)
    tested = f" ({os.path.basename(config.eval)})" if config.eval else ""
    return (
        f"jmeta: trained on {describe(train_set)} of {source} (each rotated by 90, 180 and 270 "
        f"degrees as new classes), tested on {describe(test_set)}{tested} it never saw; "
        f"accuracy mean ± 95% CI over {config.eval_tasks} tasks of {config.queries} queries "
        "per class. Published: Vinyals et al.'s split, 1,200 characters of background and "
        "evaluation alphabets mixed for training, the other 423 for testing, so a "
        "background-set model trains on fewer characters and is tested on other ones."
    )


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    settings = check(config)
    train_set, test_set, grouped = load_split(config)
    within, within_note = within_alphabet_set(config, grouped)
    rows, results, first = [], {}, None
    ways_needed = sorted({w for w, _ in settings} | ({20} if within is not None else set()))
    run.expect_stages(sum(1 if m in ANY_WAYS else len(ways_needed) for m in config.methods))
    for method in config.methods:
        if method in ANY_WAYS:
            # Trained once, it serves any number of ways at test time.
            trained, meta_params = train_model(
                config, run, method, config.train_ways, train_set, progress
            )
            models = {
                w: (
                    for_ways(method, trained.learners[0], w, rotated_classes(train_set)),
                    meta_params,
                )
                for w in ways_needed
            }
        else:
            models = {
                w: train_model(config, run, method, w, train_set, progress) for w in ways_needed
            }
        first = first or (method, models[5 if 5 in models else ways_needed[0]])
        for ways, shots in settings:
            meta_learner, meta_params = models[ways]
            results[f"{method}/{ways}-way {shots}-shot"] = run.stage(
                f"eval-{method}-{ways}x{shots}",
                lambda: _evaluate(config, meta_learner, meta_params, test_set, ways, shots),
            )
        if within is not None:
            meta_learner, meta_params = models[20]
            results[f"{method}/20-way 1-shot within alphabet"] = run.stage(
                f"eval-{method}-within",
                lambda: _evaluate(
                    config, meta_learner, meta_params, within, 20, 1, groups=within.groups, salt=1
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
        ["20-way 1-shot within alphabet"] if within is not None else []
    )
    note = protocol_note(config, train_set, test_set)
    table = markdown_table(["method"] + columns, rows + published_rows(settings, len(columns)))
    with open(run.file("table.md"), "w") as f:
        f.write(f"{table}\n{note}\n\nWithin alphabet: {within_note}.\n")
    method, (meta_learner, meta_params) = first
    _plot(config, meta_learner, meta_params, test_set, run.file("episodes.png"))
    print(f"\nOmniglot few-shot accuracy\n\n{table}\n{note}\nWithin alphabet: {within_note}.")
    return {
        "accuracy": results,
        "published": PUBLISHED,
        "train_characters": describe(train_set),
        "test_characters": describe(test_set),
        "train_alphabets": train_set.group_names,
        "test_alphabets": test_set.group_names,
        "within_alphabet": within_note,
    }
