"""Benchmark of the core: meta-steps/s, tasks/s, compile seconds and peak memory (JSON + table).

Command:  jmeta run bench-core
Runtime:  about 3 minutes on a 2-core laptop CPU (plus about 1 minute for the PyTorch
          baseline when torch is installed).
Expected: sinusoid MAML at meta-batch 1024 at least 50x the tasks/s of a learn2learn-style
          PyTorch loop measured in the same run; jmeta's step within a few percent of a
          hand-written jitted vmap of the same step; one compile per shape.

Baselines measured in the same run, on the same machine:

* ``handwritten``: the sinusoid MAML step written directly as ``jax.jit`` of a ``vmap``ped
  one-step MAML loss with optax Adam, without any of jmeta's machinery.
* ``torch_loop``: what learn2learn's ``MAML.clone().adapt()`` does, written in plain
  PyTorch (``torch.autograd.grad(create_graph=True)`` per task, a Python loop over tasks).
  learn2learn 0.2.0 itself does not install on Python 3.11 (its shipped C extension
  includes ``longintrepr.h``); its own MAML, loaded from its source as the few-shot
  benchmark does, ran this workload at 1.16 ms per task against this loop's 1.21 ms
  (meta-batch 256, alternating, 2-core CPU, 2026-11-27), so the ratio against this loop
  is the ratio against learn2learn. Skipped when torch is not installed; it is not a
  dependency of jmeta.

Peak memory is XLA's own buffer assignment for the compiled meta-gradient
(``compiled.memory_analysis()``): the temporary bytes it allocates, exact and repeatable
on any backend, rather than a sampled resident-set size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jmeta import algorithms
from jmeta.benchmark import (
    compile_timed,
    counting_compiles,
    machine_record,
    memory_record,
    timed,
    write_results,
)
from jmeta.experiments._torch_baselines import sinusoid_maml_loop
from jmeta.inner import REMAT_KINDS
from jmeta.losses import mse
from jmeta.models import mlp_learner
from jmeta.objective import make_meta_learner
from jmeta.outer import default_optimizer, make_meta_step
from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.tasks import make_sinusoid_sampler, sample_tasks
from jmeta.validation import check_fields


@dataclasses.dataclass(frozen=True)
class Config:
    algorithms: tuple[str, ...] = ("maml", "metasgd")
    meta_batch: tuple[int, ...] = (25, 256, 4096)
    baseline_meta_batch: int = 1024
    shots: int = 10
    queries: int = 10
    inner_lr: float = 0.01
    min_seconds: float = 1.0
    tasks_per_call: int = 25600
    memory_num_inner_steps: tuple[int, ...] = (1, 5, 20)
    memory_meta_batch: int = 1024
    torch_baseline: bool = True
    torch_tasks: int = 3072
    seed: int = 0


def _jmeta_throughput(config: Config, algorithm: str, meta_batch: int) -> dict:
    key = jax.random.key(config.seed)
    meta_learner = make_meta_learner(
        mlp_learner(key), algorithms.algorithm_config(algorithm, inner_lr=config.inner_lr)
    )
    meta_step = make_meta_step(
        meta_learner,
        make_sinusoid_sampler(config.shots, config.queries),
        meta_batch,
        default_optimizer(),
    )
    holder = {"state": meta_step.init(meta_learner.init())}
    steps_per_call = max(1, config.tasks_per_call // meta_batch)

    compiled_run, compile_seconds = compile_timed(
        meta_step.run, holder["state"], key, steps_per_call
    )

    def scanned():
        holder["state"], metrics = compiled_run(holder["state"], key)
        jax.block_until_ready(metrics)

    def stepped():
        holder["state"], metrics = meta_step.step(holder["state"], key)
        jax.block_until_ready(metrics)

    with counting_compiles() as compiles:
        scanned(), stepped()  # warm-up (the single step compiles here)
        seconds_per_call, _ = timed(scanned, config.min_seconds)
        seconds_per_step, _ = timed(stepped, config.min_seconds)
    return {
        "algorithm": algorithm,
        "meta_batch": meta_batch,
        **compile_seconds,
        "meta_steps_per_second": steps_per_call / seconds_per_call,
        "tasks_per_second": steps_per_call * meta_batch / seconds_per_call,
        "step_call_meta_steps_per_second": 1 / seconds_per_step,
        "step_call_tasks_per_second": meta_batch / seconds_per_step,
        "step_compiles": compiles["compiles"],
    }


def _handwritten_throughput(config: Config, meta_batch: int) -> dict:
    """The same MAML step as ``jax.jit`` of a vmapped loss, with nothing of jmeta's core."""
    learner = mlp_learner(jax.random.key(config.seed))
    apply_fn, sampler, optimizer = (
        learner.apply_fn,
        make_sinusoid_sampler(config.shots, config.queries),
        optax.adam(1e-3),
    )

    def task_loss(params, task):
        grads = jax.grad(lambda p: mse(apply_fn(p, task.support.x), task.support.y))(params)
        adapted = jax.tree_util.tree_map(lambda p, g: p - config.inner_lr * g, params, grads)
        return mse(apply_fn(adapted, task.query.x), task.query.y)

    @jax.jit
    def step(params, opt_state, key):
        tasks = sample_tasks(sampler, key, meta_batch)
        grads = jax.grad(lambda p: jnp.mean(jax.vmap(task_loss, in_axes=(None, 0))(p, tasks)))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    holder = {"params": learner.params, "opt_state": optimizer.init(learner.params), "step": 0}
    key = jax.random.key(config.seed)

    def call():
        holder["params"], holder["opt_state"] = step(
            holder["params"], holder["opt_state"], jax.random.fold_in(key, holder["step"])
        )
        holder["step"] += 1
        jax.block_until_ready(holder["params"])

    call()
    seconds, _ = timed(call, config.min_seconds)
    return {
        "meta_batch": meta_batch,
        "meta_steps_per_second": 1 / seconds,
        "tasks_per_second": meta_batch / seconds,
    }


def _memory(config: Config) -> list[dict]:
    """XLA's peak temporary memory (and the time) of the second-order MAML meta-gradient."""
    tasks = sample_tasks(
        make_sinusoid_sampler(config.shots, config.queries),
        jax.random.key(config.seed),
        config.memory_meta_batch,
    )
    rows = []
    for remat in REMAT_KINDS:
        for steps in config.memory_num_inner_steps:
            meta_learner = make_meta_learner(
                mlp_learner(jax.random.key(config.seed)),
                algorithms.algorithm_config(
                    "maml", num_inner_steps=steps, remat=remat, inner_lr=config.inner_lr
                ),
            )
            meta_params = meta_learner.init()
            compiled = jax.jit(meta_learner.meta_grad).lower(meta_params, tasks).compile()
            memory = memory_record(compiled)
            jax.block_until_ready(compiled(meta_params, tasks))
            seconds, _ = timed(
                lambda: jax.block_until_ready(compiled(meta_params, tasks)), config.min_seconds / 4
            )
            rows.append(
                {
                    "num_inner_steps": steps,
                    "remat": remat,
                    "meta_batch": config.memory_meta_batch,
                    "temp_bytes": memory["temp_bytes"],
                    "seconds": seconds,
                    "total_bytes": memory["total_bytes"],
                }
            )
    return rows


def check(config: Config) -> None:
    """Every field checked before the run folder is made or any data read."""
    for algorithm in config.algorithms:
        algorithms.algorithm_config(algorithm)
    check_fields(
        config,
        positive_ints=(
            "meta_batch",
            "baseline_meta_batch",
            "shots",
            "queries",
            "tasks_per_call",
            "memory_num_inner_steps",
            "memory_meta_batch",
            "torch_tasks",
        ),
        positive_floats=("inner_lr", "min_seconds"),
    )


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    machine = machine_record()
    throughput = [
        _jmeta_throughput(config, a, b)
        for a in config.algorithms
        for b in sorted(set(config.meta_batch) | {config.baseline_meta_batch})
    ]
    handwritten = _handwritten_throughput(config, config.baseline_meta_batch)
    torch_loop = sinusoid_maml_loop(config) if config.torch_baseline else None
    memory = _memory(config)

    maml_at_baseline = next(
        r
        for r in throughput
        if r["algorithm"] == config.algorithms[0] and r["meta_batch"] == config.baseline_meta_batch
    )
    ratios = {
        "jmeta_over_handwritten": maml_at_baseline["tasks_per_second"]
        / handwritten["tasks_per_second"],
        "jmeta_step_call_over_handwritten": maml_at_baseline["step_call_tasks_per_second"]
        / handwritten["tasks_per_second"],
    }
    if torch_loop is not None:
        ratios["jmeta_over_torch_loop"] = (
            maml_at_baseline["tasks_per_second"] / torch_loop["tasks_per_second"]
        )
        ratios["handwritten_over_torch_loop"] = (
            handwritten["tasks_per_second"] / torch_loop["tasks_per_second"]
        )
    by_steps = {(r["remat"], r["num_inner_steps"]): r["temp_bytes"] for r in memory}
    first, last = min(config.memory_num_inner_steps), max(config.memory_num_inner_steps)
    memory_ratio = {
        f"remat={remat}": by_steps[(remat, last)] / by_steps[(remat, first)]
        for remat in REMAT_KINDS
    }
    memory_ratio["remat=rollout over remat=none at the fewest steps"] = (
        by_steps[("rollout", last)] / by_steps[("none", first)]
    )
    results = {
        "machine": machine,
        "config": dataclasses.asdict(config),
        "throughput": throughput,
        "handwritten": handwritten,
        "torch_loop": torch_loop,
        "ratios": ratios,
        "memory": memory,
        f"memory_ratio_{last}_over_{first}_steps": memory_ratio,
    }

    rows = [
        [
            r["algorithm"],
            r["meta_batch"],
            f"{r['meta_steps_per_second']:,.0f}",
            f"{r['tasks_per_second']:,.0f}",
            f"{r['step_call_tasks_per_second']:,.0f}",
            f"{r['compile_seconds']:.2f}",
        ]
        for r in throughput
    ]
    rows.append(
        [
            "hand-written jit(vmap)",
            handwritten["meta_batch"],
            f"{handwritten['meta_steps_per_second']:,.0f}",
            f"{handwritten['tasks_per_second']:,.0f}",
            f"{handwritten['tasks_per_second']:,.0f}",
            "",
        ]
    )
    if torch_loop is not None:
        rows.append(
            [
                "PyTorch loop (learn2learn-style)",
                torch_loop["meta_batch"],
                f"{torch_loop['meta_steps_per_second']:,.2f}",
                f"{torch_loop['tasks_per_second']:,.0f}",
                f"{torch_loop['tasks_per_second']:,.0f}",
                "",
            ]
        )
    table = markdown_table(
        [
            "method",
            "meta-batch",
            "meta-steps/s (scan)",
            "tasks/s (scan)",
            "tasks/s (step call)",
            "compile s",
        ],
        rows,
    )
    memory_rows = [
        [
            r["num_inner_steps"],
            r["remat"],
            f"{r['temp_bytes'] / 2**20:.1f}",
            f"{r['seconds'] * 1000:.0f}",
        ]
        for r in memory
    ]
    table += "\n" + markdown_table(
        [
            "inner steps",
            "remat",
            f"peak temp MiB (meta-batch {config.memory_meta_batch})",
            "ms per meta-gradient",
        ],
        memory_rows,
    )
    table += (
        "\n"
        + "\n".join(
            f"- {name}: {value:.2f}"
            for name, value in {
                **ratios,
                **{f"memory {last}/{first} steps, {k}": v for k, v in memory_ratio.items()},
            }.items()
        )
        + "\n"
    )
    write_results(run, "bench_core", results, table)
    print(
        f"\nCore benchmark on {machine['processor']} ({machine['cpu_count']} cores, "
        f"{machine['backend']})\n\n{table}"
    )
    return results
