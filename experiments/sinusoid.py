"""Sinusoid regression: MAML, Meta-SGD and MAML with a learned inner rate (Finn et al. 2017).

Command:  jmeta run sinusoid                     (the README's quick start)
          jmeta run sinusoid num_steps=70000     (the paper's length of meta-training)
          jmeta run sinusoid methods=maml,imaml,mamlpp,boil   (about 15 minutes)
Runtime:  about 4 minutes on a 2-core laptop CPU with the defaults (10 models x 20,000
          meta-steps, meta-batch 25), about 12 minutes at 70,000 steps.
Expected: MSE after 1 / 5 / 10 steps on 600 held-out tasks; MAML trained at K=10 and
          scored at K=5 near the paper's 0.67 / 0.38 / 0.35, the pretrained baseline near
          2.41 / 2.23 / 2.19, and Meta-SGD at or below MAML at every K.

Every model starts from the same initial weights and sees the same stream of training
tasks for its K; all are scored on the same fixed evaluation sines. Each trains with
``num_inner_steps`` steps of ``inner_lr`` except where ``METHOD_SETTINGS`` says otherwise
(the table says how many steps each took): iMAML needs its proximal problem solved.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jmeta import algorithms
from jmeta.config import MetaTraining
from jmeta.evaluate import evaluate, summarise
from jmeta.models import COMPUTE_DTYPES, mlp_learner
from jmeta.objective import make_meta_learner
from jmeta.runs import RunDir
from jmeta.sharding import mesh_for
from jmeta.stats import csv_table, format_mean_ci, markdown_table
from jmeta.tasks import make_sinusoid_sampler, sample_tasks, sinusoid_curve
from jmeta.training import train
from jmeta.validation import check_choice, check_fields

PUBLISHED_K5 = {"maml": (0.67, 0.38, 0.35), "pretrained": (2.41, 2.23, 2.19)}
LABELS = {
    "maml": "MAML",
    "metasgd": "Meta-SGD",
    "maml_lr": "MAML, learned inner rate",
    "pretrained": "pretrained",
    "fomaml": "first-order MAML",
    "lslr": "MAML++ LSLR",
    "anil": "ANIL",
    "boil": "BOIL",
    "reptile": "Reptile",
    "imaml": "iMAML",
    "mamlpp": "MAML++",
}
# What a method needs beyond the shared settings, which these override. iMAML: 40 proximal
# steps at the rate 1 / (lambda + h) (inner_lr=1 leaves the cap in charge), lambda = 50,
# about the pull of one MAML step of 0.01. MAML++: no per-step norm weights, since the MLP
# has no normalisation layer; it keeps the shared single step, which makes its multi-step
# loss the last step's (with its paper's 5 steps, K = 5 meta-training blew up twice after
# 8,000 steps, to a query MSE of 1e5, with derivative-order annealing and without).
METHOD_SETTINGS = {
    "imaml": {"num_inner_steps": 40, "inner_lr": 1.0, "proximal": 50.0},
    "mamlpp": {"per_step_norm": False},
}


@dataclasses.dataclass(frozen=True)
class Config(MetaTraining):
    methods: tuple[str, ...] = ("maml", "metasgd", "maml_lr")
    shots: tuple[int, ...] = (5, 10, 20)
    num_steps: int = 20000
    meta_batch: int = 25
    queries: int = 10
    num_inner_steps: int = 1
    inner_lr: float = 0.01
    outer_lr: float = 0.001
    hidden: tuple[int, ...] = (40, 40)
    pretrained_baseline: bool = True
    train_shots_for_anchor: int = 10
    anchor_shots: int = 5
    eval_tasks: int = 600
    eval_queries: int = 100
    eval_steps: tuple[int, ...] = (1, 5, 10)
    plot_tasks: int = 4
    seed: int = 0
    log_every: int = 250
    checkpoint_every: int = 5000
    # "bfloat16": the network's passes in bfloat16, weights and updates float32.
    compute_dtype: str = "float32"

    def check(self) -> None:
        super().check()
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        for method in self.methods:
            algorithms.algorithm_config(method)  # unknown names fail before any training
        # Bad values fail by their field's name, not after training (outer_lr=nan trained silently).
        check_fields(
            self,
            positive_ints=(
                "shots",
                "queries",
                "num_inner_steps",
                "hidden",
                "train_shots_for_anchor",
                "anchor_shots",
                "eval_tasks",
                "eval_queries",
                "eval_steps",
                "plot_tasks",
            ),
            positive_floats=("inner_lr",),
        )
        if self.train_shots_for_anchor not in self.shots:
            raise ValueError(
                f"train_shots_for_anchor ({self.train_shots_for_anchor}) must be one of shots "
                f"{self.shots}"
            )


def _train(config: Config, run: RunDir, method: str, shots: int, progress: bool):
    """Meta-trains one model (or the pretrained baseline) and returns its meta-learner and
    params."""
    key = jax.random.key(config.seed)
    learner = mlp_learner(jax.random.fold_in(key, 0), hidden=config.hidden)
    algorithm = "maml" if method == "pretrained" else method
    meta_learner = make_meta_learner(learner, algorithm_for(config, algorithm))
    if method == "pretrained":
        meta_learner = algorithms.joint_training(meta_learner)
    state = train(
        meta_learner,
        make_sinusoid_sampler(shots, config.queries),
        jax.random.fold_in(key, shots),
        config.num_steps,
        meta_batch=config.meta_batch,
        outer_lr=config.outer_lr,
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        run=run,
        stage=f"{method}-k{shots}",
        progress=progress,
        mesh=mesh_for(config.devices),
    )
    return meta_learner, state.meta_params


def algorithm_for(config: Config, method: str):
    """The ``MetaLearnerConfig`` of ``method``: the shared inner loop, then its own
    ``METHOD_SETTINGS``."""
    shared = {
        "num_inner_steps": config.num_inner_steps,
        "inner_lr": config.inner_lr,
        "compute_dtype": config.compute_dtype,
    }
    return algorithms.algorithm_config(method, **{**shared, **METHOD_SETTINGS.get(method, {})})


def _eval_tasks(config: Config, shots: int):
    """The fixed evaluation tasks: the same sines for every method and K."""
    sampler = make_sinusoid_sampler(shots, config.eval_queries)
    return sample_tasks(
        sampler, jax.random.fold_in(jax.random.key(config.seed), 10**6), config.eval_tasks
    )


def _score(config: Config, meta_learner, meta_params, shots: int) -> dict:
    """Query MSE after each of ``eval_steps`` inner steps: mean, 95% CI, per-task values."""
    losses = evaluate(
        meta_learner, meta_params, _eval_tasks(config, shots), max(config.eval_steps), chunk=0
    )["loss"]
    by_step = summarise(losses)
    return {str(s): by_step[s] for s in (0, *config.eval_steps)}


def _plot(config: Config, models: dict, shots: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = jax.random.split(
        jax.random.fold_in(jax.random.key(config.seed), 10**6), config.eval_tasks
    )
    keys = keys[: config.plot_tasks]
    tasks = jax.vmap(make_sinusoid_sampler(shots, 1))(keys)
    grid = jnp.linspace(-5, 5, 200)[:, None]
    figure, axes = plt.subplots(
        len(keys),
        len(models),
        figsize=(3.2 * len(models), 2.4 * len(keys)),
        squeeze=False,
        sharex=True,
    )
    for column, (method, (meta_learner, meta_params)) in enumerate(models.items()):
        for row, key in enumerate(keys):
            axis = axes[row, column]
            task = jax.tree_util.tree_map(lambda leaf: leaf[row], tasks)
            axis.plot(grid[:, 0], sinusoid_curve(key, grid)[:, 0], "k-", lw=2, label="true sine")
            pre = meta_learner.predict(meta_params, meta_params.learners, grid)
            axis.plot(grid[:, 0], pre[:, 0], ":", color="tab:gray", label="before adapting")
            for steps, color in ((1, "tab:blue"), (max(config.eval_steps), "tab:red")):
                adapted, _ = meta_learner.adapt(meta_params, task.support, steps)
                axis.plot(
                    grid[:, 0],
                    meta_learner.predict(meta_params, adapted, grid)[:, 0],
                    "--",
                    color=color,
                    label=f"after {steps} step{'s' if steps > 1 else ''}",
                )
            axis.plot(
                task.support.x[:, 0],
                task.support.y[:, 0],
                "^",
                color="tab:purple",
                label=f"{shots} shots",
            )
            if row == 0:
                axis.set_title(LABELS.get(method, method))
    axes[0, 0].legend(fontsize=7, loc="lower left")
    figure.suptitle(f"Sinusoid regression, K={shots}: adapted curves on held-out tasks")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _row(config: Config, method: str, shots: int, scores: dict) -> list[str]:
    return [_label(config, method), shots] + [
        format_mean_ci(scores[str(s)]["mean"], scores[str(s)]["ci95"]) for s in config.eval_steps
    ]


def _label(config: Config, method: str) -> str:
    """The method's name, with its training steps where they differ from the others'."""
    own = METHOD_SETTINGS.get(method, {}).get("num_inner_steps", config.num_inner_steps)
    name = LABELS.get(method, method)
    return name if own == config.num_inner_steps else f"{name} ({own} inner steps)"


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    anchor_trained = config.pretrained_baseline and config.train_shots_for_anchor in config.shots
    run.expect_stages(len(config.shots) * len(config.methods) + anchor_trained)
    table, models = {}, {}
    for shots in config.shots:
        for method in config.methods + (
            ("pretrained",)
            if config.pretrained_baseline and shots == config.train_shots_for_anchor
            else ()
        ):
            meta_learner, meta_params = _train(config, run, method, shots, progress)
            models[(method, shots)] = (meta_learner, meta_params)
            eval_shots = sorted(set(config.shots) if method == "pretrained" else {shots})
            if shots == config.train_shots_for_anchor:
                eval_shots = sorted(set(eval_shots) | {config.anchor_shots})
            for k in eval_shots:
                table[f"{method}/train{shots}/eval{k}"] = run.stage(
                    f"eval-{method}-train{shots}-eval{k}",
                    lambda: _score(config, meta_learner, meta_params, k),
                )

    steps = config.eval_steps
    header = ["method", "K"] + [f"MSE after {s} step{'s' if s > 1 else ''}" for s in steps]
    rows = [
        _row(config, m, k, table[f"{m}/train{k}/eval{k}"])
        for k in config.shots
        for m in config.methods
    ]
    if config.pretrained_baseline:
        rows += [
            _row(
                config,
                "pretrained",
                k,
                table[f"pretrained/train{config.train_shots_for_anchor}/eval{k}"],
            )
            for k in config.shots
        ]
    anchor_header = ["method", "trained K", "scored K"] + [
        f"{s} step{'s' if s > 1 else ''}" for s in steps
    ]
    anchor_rows = []
    for method in ("maml", "pretrained"):
        name = f"{method}/train{config.train_shots_for_anchor}/eval{config.anchor_shots}"
        if name in table:
            anchor_rows.append(_row(config, method, config.train_shots_for_anchor, table[name]))
            anchor_rows[-1].insert(2, config.anchor_shots)
            if config.anchor_shots == 5 and tuple(steps) == (1, 5, 10):
                anchor_rows.append([f"{LABELS[method]} (published)", 10, 5, *PUBLISHED_K5[method]])

    checks = {}
    if "maml" in config.methods and "metasgd" in config.methods:
        checks["metasgd_at_or_below_maml"] = {
            str(k): all(
                table[f"metasgd/train{k}/eval{k}"][str(s)]["mean"]
                <= table[f"maml/train{k}/eval{k}"][str(s)]["mean"]
                for s in steps
            )
            for k in config.shots
        }

    markdown = markdown_table(header, rows) + "\n" + markdown_table(anchor_header, anchor_rows)
    with open(run.file("table.md"), "w") as f:
        f.write(markdown)
    with open(run.file("table.csv"), "w") as f:
        f.write(csv_table(header, rows))
    plot_shots = config.anchor_shots if config.anchor_shots in config.shots else config.shots[0]
    _plot(
        config,
        {m: models[(m, plot_shots)] for m in config.methods},
        plot_shots,
        run.file("adapted_curves.png"),
    )
    print(
        f"\nSinusoid regression: query MSE on {config.eval_tasks} held-out tasks (mean ± 95% CI), "
        f"{config.num_steps} meta-steps per model\n\n{markdown}"
    )
    if checks:
        print(
            f"Meta-SGD at or below MAML at every step count: {checks['metasgd_at_or_below_maml']}"
        )
    return {
        "scores": table,
        "checks": checks,
        "table": {"header": header, "rows": rows},
        "anchors": {"header": anchor_header, "rows": anchor_rows},
    }
