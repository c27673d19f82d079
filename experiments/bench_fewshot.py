"""Benchmark of few-shot classification: conv4 MAML and prototypical networks (JSON + table).

Command:  jmeta run bench-fewshot
Runtime:  about 10 minutes on a 2-core laptop CPU (4 with ``num_inner_steps=1``); each row
          compiles once (10-25 s). The rows of one inner-step count, the PyTorch loop
          among them, then run in alternation, one step each per round, until every row
          has at least three timed steps and ``min_seconds`` in all; each reports its
          median. Machine drift (this 2-core VM moves by 10-30% over minutes) then hits the
          PyTorch loop and jmeta alike, so their ratio is the stable number. The JSON and
          table are rewritten after every group of rows: a run stopped part-way keeps them.
Expected: meta-steps/s and tasks/s of conv4 MAML (5-way 1-shot, 15 queries, meta-batch
          32; 1 and 5 inner steps; second and first order) and of prototypical networks at
          the same episode shape; XLA's FLOP count per step and the fraction of this
          machine's measured float32 matmul peak that it reaches; and a learn2learn-style
          PyTorch MAML loop on the same workload for the ratio (on CUDA when JAX runs on
          a GPU); with ``learn2learn=PATH`` (an unpacked learn2learn source, see
          ``_torch_baselines.py``) or an installed learn2learn that imports, learn2learn's own
          MAML too, in the same rounds. Each meta-learner runs once per entry of
          ``task_chunk`` (0: one vmap over tasks) and of ``conv`` (``im2col``: one matmul
          per convolution, the fast path on CPU; ``xla``: ``lax.conv``). On a GPU:
          ``conv=im2col,xla task_chunk=0``.
          MAML runs every inner step in one scan (``peel_first_step=False``, the shorter
          compile for conv4); its FLOP count still counts every step.

The few-shot issue once set a CPU target against it (1.5x learn2learn's meta-steps/s at 1
inner step on 2 cores); that target was withdrawn and the measured numbers stand. Their
history is in ``experiments/results/BENCHMARK_NOTES.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from jmeta import algorithms
from jmeta.benchmark import (
    alternating,
    compile_timed,
    machine_record,
    matmul_peak,
    step_summary,
    write_results,
    xla_flops,
)
from jmeta.execution import CONV_IMPLEMENTATIONS, Execution
from jmeta.experiments._torch_baselines import conv4_maml_loop, learn2learn_conv4_maml, load_maml
from jmeta.models import conv4_learner
from jmeta.objective import make_meta_learner
from jmeta.outer import default_optimizer, make_meta_step
from jmeta.protonet import make_protonet
from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.tasks import make_episode_sampler
from jmeta.validation import check_choice, check_fields


@dataclasses.dataclass(frozen=True)
class Config:
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 32
    num_inner_steps: tuple[int, ...] = (1, 5)
    task_chunk: tuple[int, ...] = (0, 2)
    conv: tuple[str, ...] = ("im2col",)
    image_size: int = 28
    filters: int = 64
    strided: bool = False
    min_seconds: float = 6.0
    matmul_size: int = 2048
    torch_baseline: bool = True  # the PyTorch loop, and an installed learn2learn that imports
    learn2learn: str = (
        ""  # a learn2learn source folder: its MAML as a row, whatever torch_baseline says
    )
    peel_first_step: bool = False
    seed: int = 0


def _steps(steps: int) -> str:
    return f"{steps} step{'s' if steps > 1 else ''}"


def _label(conv: str, chunk: int) -> str:
    parts = (["lax.conv"] if conv == "xla" else []) + (
        [f"chunks of {chunk} tasks"] if chunk else []
    )
    return "".join(", " + part for part in parts)


def _inner_loop_flops(build: Callable[[int], object], steps: int, sampler, config: Config) -> float:
    """XLA's FLOP count of a meta-step with ``steps`` inner steps; ``build(steps)`` gives the
    unchunked meta-learner with the first step peeled.

    XLA counts a loop's body once, not once per iteration, so the count of the program itself
    misses steps. The 1-step program has no loop and the 2-step one a loop of one iteration, so
    both are counted exactly, and each further step costs what the second did.
    """
    one = _flops(build(1), sampler, config)
    return one if steps == 1 else one + (steps - 1) * (_flops(build(2), sampler, config) - one)


def _flops(meta_learner, sampler, config: Config) -> float:
    """XLA's FLOP count of one meta-step, from the unchunked program (a ``lax.map`` over
    chunks is counted once, not once per chunk, so chunked programs under-report)."""
    meta_step = make_meta_step(meta_learner, sampler, config.meta_batch, default_optimizer())
    shapes = jax.eval_shape(
        lambda: (meta_step.init(meta_learner.init()), jax.random.key(config.seed))
    )
    return xla_flops(meta_step.step, *shapes)


def _compiled_step(meta_learner, sampler, config: Config) -> tuple[Callable[[], None], dict]:
    """One compiled meta-step as a call that runs a step and waits for it, and its compile
    seconds (tracing and lowering apart from XLA's)."""
    meta_step = make_meta_step(meta_learner, sampler, config.meta_batch, default_optimizer())
    state = [meta_step.init(meta_learner.init())]
    key = jax.random.key(config.seed)
    compiled, seconds = compile_timed(meta_step.step, state[0], key)

    def call():
        state[0], metrics = compiled(state[0], key)  # the state is donated: keep the new one
        jax.block_until_ready(metrics)

    return call, seconds


def check(config: Config) -> None:
    """Refuses a bad field by name before anything is measured or compiled."""
    check_fields(
        config,
        positive_ints=(
            "shots",
            "queries",
            "meta_batch",
            "image_size",
            "filters",
            "matmul_size",
            "num_inner_steps",
        ),
        non_negative_ints=("task_chunk",),
        at_least_two=("ways",),
    )
    for conv in config.conv:
        check_choice("conv", conv, CONV_IMPLEMENTATIONS)
    if not (np.isfinite(config.min_seconds) and config.min_seconds >= 0):
        raise ValueError(f"min_seconds must be a finite number >= 0, got {config.min_seconds!r}")


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    rng = np.random.default_rng(config.seed)
    data = rng.random((64, 20, config.image_size, config.image_size, 1)).astype(np.float32)
    sampler = make_episode_sampler(data, config.ways, config.shots, config.queries)
    shape = (config.image_size, config.image_size, 1)
    peak = matmul_peak(config.matmul_size)
    results = {
        "machine": {**machine_record(), "matmul_flops_per_second": peak},
        "config": dataclasses.asdict(config),
        "jmeta": {},
        "torch_loop": {},
        "learn2learn": {},
    }
    key = jax.random.key(config.seed)
    # Loaded (and a bad source folder refused) before anything compiles.
    maml_class = (
        load_maml(config.learn2learn) if config.torch_baseline or config.learn2learn else None
    )

    def baselines(steps: int) -> dict[str, tuple]:
        """The PyTorch rows of ``steps`` inner steps, by results section: (timing key, call,
        info)."""
        found = {}
        if config.torch_baseline:
            found["torch_loop"] = ("PyTorch loop", conv4_maml_loop(config, steps))
        if maml_class is not None:
            found["learn2learn"] = (
                "learn2learn",
                learn2learn_conv4_maml(config, steps, maml_class),
            )
        return {
            section: (name, *made) for section, (name, made) in found.items() if made is not None
        }

    def measure(
        group: dict[str, tuple],
        baseline_rows: dict[str, tuple] | None = None,
        baseline_name: str = "",
    ) -> str:
        """Times one group of rows in alternation and writes every row so far (returns their
        table); ``group`` maps a row to (call, compile s, FLOPs)."""
        baseline_rows = baseline_rows or {}
        calls = {name: call for name, (call, _, _) in group.items()}
        # Their own keys: "maml 1 step" also names a jmeta row.
        calls.update({name: call for name, call, _ in baseline_rows.values()})
        seconds = alternating(calls, config.min_seconds)
        for name, (_, compile_seconds, flops) in group.items():
            r = step_summary(seconds[name], config.meta_batch)
            results["jmeta"][name] = {
                **r,
                **compile_seconds,
                "flops_per_step": flops,
                "fraction_of_matmul_peak": flops * r["meta_steps_per_second"] / peak,
            }
        for section, (name, _, info) in baseline_rows.items():
            results[section][baseline_name] = {
                **step_summary(seconds[name], config.meta_batch),
                **info,
            }
        table = _write(results, run)
        if progress:
            print(
                f"timed {', '.join(calls)}; written to {run.file('bench_fewshot.json')}", flush=True
            )
        return table

    def compiled(name: str, meta_learner, flops: float) -> tuple:
        call, compile_seconds = _compiled_step(meta_learner, sampler, config)
        if progress:  # a slow compile shows in the log before the group is timed
            print(f"compiled {name} in {compile_seconds['compile_seconds']:.1f} s", flush=True)
        return call, compile_seconds, flops

    for steps in config.num_inner_steps:
        group = {}
        for conv in config.conv:
            learner = conv4_learner(
                key,
                shape,
                ways=config.ways,
                filters=config.filters,
                strided=config.strided,
                conv=conv,
            )
            for algorithm in ("maml", "fomaml"):

                def build(chunk, num_inner_steps=steps, peel=config.peel_first_step):
                    return make_meta_learner(
                        learner,
                        algorithms.algorithm_config(
                            algorithm, loss="ce", num_inner_steps=num_inner_steps, inner_lr=0.4
                        ),
                        Execution(task_chunk=chunk, peel_first_step=peel, conv=conv),
                    )

                flops = _inner_loop_flops(
                    lambda num_inner_steps: build(0, num_inner_steps, True), steps, sampler, config
                )
                for chunk in config.task_chunk:
                    name = f"{algorithm} {_steps(steps)}{_label(conv, chunk)}"
                    group[name] = compiled(name, build(chunk), flops)
        measure(group, baselines(steps), f"maml {_steps(steps)}")
    group = {}
    for conv in config.conv:
        embedding = conv4_learner(
            key, shape, ways=0, filters=config.filters, strided=config.strided, conv=conv
        )
        flops = _flops(make_protonet(embedding, config.ways), sampler, config)
        for chunk in config.task_chunk:
            protonet = make_protonet(
                embedding, config.ways, execution=Execution(task_chunk=chunk, conv=conv)
            )
            name = f"protonet{_label(conv, chunk)}"
            group[name] = compiled(name, protonet, flops)
    table = measure(group)
    print(
        f"\nConv4, {config.ways}-way {config.shots}-shot, {config.queries} queries, meta-batch "
        f"{config.meta_batch}; "
        f"float32 matmul peak {peak / 1e9:.0f} GFLOP/s\n\n{table}"
    )
    return results


def _write(results: dict, run: RunDir) -> str:
    """Adds the ratios to the baselines and writes the JSON and the table of every row measured
    so far, atomically: a run stopped in a later group keeps them. Returns the table."""
    rows = []
    for name, r in results["jmeta"].items():
        ratios = []
        for section in ("torch_loop", "learn2learn"):
            baseline = results[section].get(name.split(",")[0])
            ratio = (
                r["meta_steps_per_second"] / baseline["meta_steps_per_second"] if baseline else None
            )
            r[f"over_{section}"] = ratio
            ratios.append("" if ratio is None else f"{ratio:.2f}x")
        rows.append(
            [
                name,
                f"{r['seconds_per_step']:.3f}",
                f"{r['tasks_per_second']:.1f}",
                f"{r['compile_seconds']:.1f}",
                f"{r['flops_per_step'] / 1e9:.1f}",
                f"{100 * r['fraction_of_matmul_peak']:.1f}%",
                *ratios,
            ]
        )
    for section, label in (("torch_loop", "PyTorch loop"), ("learn2learn", "learn2learn")):
        for name, r in results[section].items():
            rows.append(
                [
                    f"{label}, {name}",
                    f"{r['seconds_per_step']:.3f}",
                    f"{r['tasks_per_second']:.1f}",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    table = markdown_table(
        [
            "method",
            "s per meta-step",
            "tasks/s",
            "compile s",
            "GFLOP per step",
            "of matmul peak",
            "over PyTorch loop",
            "over learn2learn",
        ],
        rows,
    )
    write_results(run, "bench_fewshot", results, table)
    return table
