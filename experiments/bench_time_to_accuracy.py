"""Benchmark of time to accuracy on Omniglot characters never seen (JSON + table + plot).

How long a prototypical network trains before it reaches a target accuracy.

Command:  jmeta run bench-time-to-accuracy
Runtime:  about 6 minutes on a 2-core laptop CPU (three seeds, each until 95%).
Writes:   time_to_accuracy.json, time_to_accuracy.md, time_to_accuracy.png (accuracy
          against training seconds, one line per seed).
Expected: the training seconds and meta-steps a conv4 prototypical network, trained as
          ``jmeta run omniglot`` trains it (same fields and defaults), needs to reach 95%
          5-way 1-shot accuracy on the 256 held-out characters (rows 708-963 of
          ``images_background.npz``), mean and range over ``seeds``.

Every ``check_every`` steps the model is scored on the same ``eval_tasks`` tasks (fixed by
``seed`` of the evaluation key, not by the training seed); the clock counts only the
training steps (the step is compiled before the clock starts and evaluation is not
timed), so the figure is the one to hold against another library's training loop on the
same machine. A seed that has not reached the target after ``max_steps`` is reported as
not reached, never averaged in. Results are rewritten after every seed.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jmeta.benchmark import compile_timed, machine_record, write_results
from jmeta.evaluate import evaluate, evaluation_tasks
from jmeta.experiments import omniglot
from jmeta.experiments.omniglot import parse_setting
from jmeta.outer import make_meta_step
from jmeta.protonet import make_protonet
from jmeta.runs import RunDir
from jmeta.stats import markdown_table, mean_ci95
from jmeta.tasks import make_episode_sampler
from jmeta.validation import check_fields

_TRAINING = omniglot.Training()


@dataclasses.dataclass(frozen=True)
class Config:
    background: str = omniglot.Config.background
    holdout_from: int = _TRAINING.holdout_from
    cache: bool = True
    target: float = 0.95
    setting: str = "5x1"
    seeds: tuple[int, ...] = (0, 1, 2)
    check_every: int = 100
    max_steps: int = 4000
    eval_tasks: int = 500
    # The prototypical network's training, as jmeta run omniglot has it.
    image_size: int = _TRAINING.image_size
    filters: int = _TRAINING.filters
    strided: bool = _TRAINING.strided
    train_ways: int = _TRAINING.train_ways
    train_shots: int = _TRAINING.train_shots
    queries: int = _TRAINING.queries
    outer_lr: float = _TRAINING.outer_lr
    halve_lr_every: int = _TRAINING.halve_lr_every
    execution: str = _TRAINING.execution


def check(config: Config) -> tuple[int, int]:
    """Every field checked before any data is read; returns the (ways, shots) setting."""
    check_fields(
        config,
        positive_ints=("check_every", "max_steps", "eval_tasks", "holdout_from", "filters"),
        non_negative_ints=("seeds", "halve_lr_every"),
        positive_floats=("outer_lr",),
        at_least_two=("train_ways",),
    )
    if not 0 < config.target < 1:
        raise ValueError(f"target must be an accuracy in (0, 1), got {config.target}")
    if not config.seeds:
        raise ValueError("seeds: give at least one seed")
    return parse_setting(config.setting)


def _training(config: Config, seed: int) -> omniglot.Training:
    """The omniglot experiment's training fields for one seed."""
    fields = {f.name for f in dataclasses.fields(omniglot.Training)}
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}
    return omniglot.Training(**{**shared, "seed": seed, "meta_batch": 1})


def time_to_target(config: Config, seed: int, train_set, tasks, ways: int) -> dict:
    """Trains one seed until the target or ``max_steps``; its accuracy curve and the
    training seconds and steps at which it first reached the target."""
    training = _training(config, seed)
    key = jax.random.key(seed)
    meta_learner = omniglot.make_model(
        training, "protonet", config.train_ways, train_set.images.shape[2:], key
    )
    meta_step = make_meta_step(
        meta_learner,
        omniglot.training_sampler(training, "protonet", config.train_ways, train_set),
        1,
        omniglot.outer_optimizer(training, "protonet"),
    )
    state = meta_step.init(meta_learner.init())
    step_key = jax.random.fold_in(key, 1)
    compiled, compile_seconds = compile_timed(meta_step.step, state, step_key)
    scorer = make_protonet(meta_learner.learners[0], ways)
    curve, seconds, steps, reached = [], 0.0, 0, None
    while steps < config.max_steps and reached is None:
        chunk = min(config.check_every, config.max_steps - steps)
        start = time.perf_counter()
        for _ in range(chunk):
            state, _ = compiled(state, step_key)
        jax.block_until_ready(state)
        seconds += time.perf_counter() - start
        steps += chunk
        accuracy = float(np.mean(evaluate(scorer, state.meta_params, tasks)["accuracy"][:, -1]))
        curve.append({"step": steps, "seconds": seconds, "accuracy": accuracy})
        if accuracy >= config.target:
            reached = {"steps": steps, "seconds": seconds}
    return {
        "seed": seed,
        "reached": reached is not None,
        "steps": None if reached is None else reached["steps"],
        "seconds": None if reached is None else reached["seconds"],
        "seconds_per_step": seconds / steps,
        "compile_seconds": compile_seconds["compile_seconds"],
        "curve": curve,
    }


def summary_rows(config: Config, per_seed: list[dict]) -> list[list[str]]:
    """One row per seed and a mean row over the seeds that reached the target."""
    rows = [
        [
            str(r["seed"]),
            f"{r['seconds']:.0f}" if r["reached"] else f"not in {config.max_steps} steps",
            str(r["steps"]) if r["reached"] else "-",
            f"{r['seconds_per_step'] * 1000:.0f}",
            f"{r['curve'][-1]['accuracy']:.3f}",
        ]
        for r in per_seed
    ]
    reached = [r for r in per_seed if r["reached"]]
    if reached:
        seconds = [r["seconds"] for r in reached]
        steps = [r["steps"] for r in reached]
        rows.append(
            [
                f"**mean of {len(reached)}/{len(per_seed)}**",
                f"**{np.mean(seconds):.0f}** ({min(seconds):.0f}-{max(seconds):.0f})",
                f"**{np.mean(steps):.0f}** ({min(steps)}-{max(steps)})",
                f"{np.mean([r['seconds_per_step'] for r in reached]) * 1000:.0f}",
                "",
            ]
        )
    return rows


def _plot(config: Config, per_seed: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for r in per_seed:
        axis.plot(
            [p["seconds"] for p in r["curve"]],
            [p["accuracy"] for p in r["curve"]],
            marker=".",
            label=f"seed {r['seed']}",
        )
    axis.axhline(config.target, color="grey", linestyle="--", label=f"target {config.target:.0%}")
    axis.set_xlabel("training seconds (compile and evaluation not counted)")
    axis.set_ylabel(f"{config.setting} accuracy, held-out characters")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    ways, shots = check(config)
    every = omniglot.load_omniglot(config.background, config.image_size, config.cache)
    train_set, test_set = omniglot.held_out(every, config.holdout_from)
    sampler = make_episode_sampler(test_set.images, ways, shots, config.queries)
    tasks = evaluation_tasks(sampler, jax.random.key(10**6), config.eval_tasks)
    header = ["seed", "seconds to target", "meta-steps", "ms per step", "last accuracy"]
    results = {
        "machine": machine_record(),
        "target": config.target,
        "setting": config.setting,
        "held_out": omniglot.describe(test_set),
        "trained_on": omniglot.describe(train_set),
        "per_seed": [],
    }
    for seed in config.seeds:
        results["per_seed"].append(time_to_target(config, seed, train_set, tasks, ways))
        reached = [r["seconds"] for r in results["per_seed"] if r["reached"]]
        results["mean_seconds"] = float(np.mean(reached)) if reached else None
        results["seconds_ci95"] = mean_ci95(reached)[1] if len(reached) > 1 else None
        table = (
            f"Time to {config.target:.0%} {config.setting} accuracy on {results['held_out']}, "
            f"never trained on ({results['machine']['device']}, "
            f"{results['machine']['cpu_count']} cores)\n\n"
            + markdown_table(header, summary_rows(config, results["per_seed"]))
        )
        write_results(run, "time_to_accuracy", results, table)
        if progress:
            last = results["per_seed"][-1]
            print(
                f"seed {seed}: "
                + (f"{last['seconds']:.0f} s" if last["reached"] else "not reached")
            )
    _plot(config, results["per_seed"], run.file("time_to_accuracy.png"))
    print(f"\n{table}")
    return results
