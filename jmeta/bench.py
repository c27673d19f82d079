"""``jmeta bench``: the benchmark workloads of every suite on whatever devices JAX sees,
inside a time budget, one JSON record per workload plus a markdown table and plots.

Suites: ``core`` (sinusoid MAML: tasks/s against meta-batch size, peak memory against
inner steps for each ``remat``, and scaling over 1, 2, 4 and 8 devices), ``fewshot``
(conv4 MAML and prototypical networks, 5-way 1-shot), ``unsupervised`` (k-means seconds
per Lloyd iteration against n, PCA). Each row also carries a correctness figure (a loss
after a few steps, or agreement with scikit-learn), so a fast wrong row cannot pass, and
its achieved FLOP/s as a fraction of the device's own matmul ceiling measured in the same
run. Rows of a workload alternate in timed rounds (``jmeta.benchmark.alternating``).

The budget is checked before each workload starts: one that would begin after it is
listed as skipped, never cut off half-timed. On CPU the command asks for 8 simulated
devices before JAX's backend starts, so the scaling rows run anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.benchmark import (
    alternating,
    compile_timed,
    machine_record,
    matmul_peak,
    memory_record,
    xla_flops,
)
from jmeta.checkpoint import atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1
SUITES = ("core", "fewshot", "unsupervised")
# Environment variables that change which kernels XLA picks or how many threads it uses.
KERNEL_ENVIRONMENT = (
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_TF32_OVERRIDE",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "OMP_NUM_THREADS",
    "TF_CPP_MIN_LOG_LEVEL",
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How large the workloads are: ``DEFAULT`` fits 8 minutes on one GPU, ``TINY`` seconds."""

    meta_batches: tuple[int, ...] = (8, 32, 128, 512)
    inner_steps: tuple[int, ...] = (1, 5, 10)
    scaling_batch: int = 256
    conv_filters: int = 64
    conv_meta_batch: int = 32
    kmeans_rows: tuple[int, ...] = (2_000, 20_000, 200_000)
    kmeans_features: int = 64
    kmeans_clusters: int = 64
    min_seconds: float = 1.0
    min_calls: int = 5


DEFAULT = Sizes()
TINY = Sizes(
    meta_batches=(8, 16),
    inner_steps=(1, 3),
    scaling_batch=16,
    conv_filters=4,
    conv_meta_batch=8,
    kmeans_rows=(400, 1600),
    kmeans_features=8,
    kmeans_clusters=8,
    min_seconds=0.05,
    min_calls=3,
)


# ---- what every record says about where it ran ----------------------------------------


def _git(*args: str) -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def environment_record(command: list[str]) -> dict:
    """The run's context: time, code version, command, versions, flags, devices."""
    import jaxlib

    devices = jax.devices()
    commit = _git("rev-parse", "HEAD")
    return {
        **machine_record(),
        "schema_version": SCHEMA_VERSION,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or "unknown (not a git checkout)",
        "git_dirty": bool(_git("status", "--porcelain")) if commit else False,
        "command": " ".join(command),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "environment": {
            name: os.environ[name] for name in KERNEL_ENVIRONMENT if name in os.environ
        },
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def device_memory() -> dict:
    """``memory_stats()`` of the first device where the backend has it (GPUs), else ``{}``."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU backends raise or return None
        stats = {}
    keep = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {name: int(stats[name]) for name in keep if name in stats}


# ---- the device's own ceilings ---------------------------------------------------------


def ceilings(sizes: Sizes) -> dict:
    """float32 and bfloat16 matmul FLOP/s and a device-to-device copy's bytes/s."""
    size = 256 if sizes is TINY else 4096
    found = {
        f"matmul_{dtype}_flops_per_second": matmul_peak(size, sizes.min_seconds, dtype)
        for dtype in ("float32", "bfloat16")
    }
    devices = jax.devices()
    x = jax.device_put(jnp.ones((size * size * 4,), jnp.float32), devices[0])
    target = devices[1] if len(devices) > 1 else devices[0]
    copy = (
        (lambda: jax.block_until_ready(jax.device_put(x, target)))
        if len(devices) > 1
        else (lambda: jax.block_until_ready(jnp.copy(x)))
    )
    seconds = alternating({"copy": copy}, sizes.min_seconds, sizes.min_calls)["copy"]
    found["copy_bytes_per_second"] = x.nbytes / statistics.median(seconds)
    found["copy"] = f"{devices[0]} -> {target}" + ("" if len(devices) > 1 else " (same device)")
    return found


# ---- one timed workload ---------------------------------------------------------------


def _flops(jitted, args: tuple, compiled) -> float | None:
    """XLA's FLOP count: ``jmeta.benchmark.xla_flops`` (lowered for the CPU, since XLA:GPU's
    compiled cost analysis gives none), else the compiled program's own count (a mesh of
    accelerators cannot be lowered for the CPU)."""
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    try:
        value = xla_flops(jitted, *shapes)
    except Exception:  # noqa: BLE001 - fall back to the compiled program's analysis
        value = float("nan")
    if not value == value:  # nan
        try:
            cost = compiled.cost_analysis()
        except Exception:  # noqa: BLE001
            return None
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        value = (cost or {}).get("flops")
    return float(value) if value is not None and value >= 0 else None


def time_rows(
    rows: dict[str, tuple[Callable, tuple]], sizes: Sizes
) -> dict[str, tuple[Any, dict, list[float], float | None]]:
    """Compiles each row's ``(jitted, args)`` apart, then times them in alternating rounds;
    returns ``(compiled, compile seconds, raw seconds, XLA FLOPs)`` per row."""
    compiled = {name: compile_timed(jitted, *args) for name, (jitted, args) in rows.items()}
    calls = {
        name: (lambda c=compiled[name][0], a=rows[name][1]: jax.block_until_ready(c(*a)))
        for name in rows
    }
    seconds = alternating(calls, sizes.min_seconds, sizes.min_calls)
    return {
        name: (*compiled[name], seconds[name], _flops(*rows[name], compiled[name][0]))
        for name in rows
    }


def record(
    workload: str,
    row: str,
    timed: tuple[Any, dict, list[float], float | None],
    *,
    shapes: dict,
    tasks_per_call: int | None,
    correctness: dict,
    ceiling: dict,
    mesh_shape: tuple = (1,),
    dtype: str = "float32",
) -> dict:
    """One row's record: its shapes, the compile split, timings, memory, FLOPs, correctness."""
    compiled, compile_seconds, seconds, flops = timed
    median = statistics.median(seconds)
    peak = ceiling.get(f"matmul_{dtype}_flops_per_second")
    return {
        "workload": workload,
        "row": row,
        "mesh_shape": list(mesh_shape),
        "shapes": shapes,
        **compile_seconds,
        "seconds_median": median,
        "seconds_spread": max(seconds) - min(seconds),
        "seconds_raw": seconds,
        "tasks_per_second": None if tasks_per_call is None else tasks_per_call / median,
        "memory_analysis": memory_record(compiled),
        "memory_stats": device_memory(),
        "xla_flops": flops,
        "flops_per_second": None if flops is None else flops / median,
        "fraction_of_matmul_peak": None if flops is None or not peak else flops / median / peak,
        "correctness": correctness,
    }


# ---- the workloads --------------------------------------------------------------------


def _sinusoid_maml(num_inner_steps: int = 1, remat: str = "none", dtype: str = "float32"):
    import jmeta

    learner = jmeta.mlp_learner(jax.random.key(0))
    config = jmeta.algorithm_config(
        "maml", num_inner_steps=num_inner_steps, remat=remat, compute_dtype=dtype
    )
    return jmeta.make_meta_learner(learner, config, jmeta.execution_preset("gpu"))


def _step_row(meta_step, meta_learner) -> tuple[Callable, tuple]:
    """A row of ``time_rows``: the meta-step jitted again without its donation (the timed
    calls reuse one state) and its arguments."""
    return jax.jit(meta_step.step), (meta_step.init(meta_learner.init()), jax.random.key(0))


def _loss_after(meta_step, meta_learner, steps: int = 5) -> dict:
    """The meta-loss before and after ``steps`` meta-steps: a row that computes nonsense fast
    shows a loss that does not fall (or is not finite)."""
    state = meta_step.init(meta_learner.init())
    first = None
    for _ in range(steps):
        state, metrics = meta_step.step(state, jax.random.key(7))
        first = float(metrics["post/loss"]) if first is None else first
    last = float(metrics["post/loss"])
    return {"loss_first": first, "loss_after_steps": last, "steps": steps}


def core_suite(sizes: Sizes, ceiling: dict, budget: Callable[[str], bool]) -> list[dict]:
    import jmeta
    from jmeta.sharding import task_mesh

    records = []
    sampler = jmeta.make_sinusoid_sampler(10, 10)
    maml = _sinusoid_maml()
    # Tasks/s against the meta-batch size.
    rows, steps = {}, {}
    for batch in sizes.meta_batches:
        steps[batch] = jmeta.make_meta_step(maml, sampler, batch)
        rows[f"meta_batch={batch}"] = _step_row(steps[batch], maml)
    for name, timed in time_rows(rows, sizes).items():
        batch = int(name.split("=")[1])
        records.append(
            record(
                "sinusoid-maml-meta-batch",
                name,
                timed,
                shapes={"meta_batch": batch, "shots": 10, "queries": 10, "net": "1-40-40-1"},
                tasks_per_call=batch,
                correctness=_loss_after(steps[batch], maml),
                ceiling=ceiling,
            )
        )
    for torch_row in _torch_rows(sizes):
        same = [r for r in records if r["row"] == torch_row["row"]]
        if same and "seconds_median" in torch_row:
            torch_row["jmeta_speed_up"] = torch_row["seconds_median"] / same[0]["seconds_median"]
        records.append(torch_row)
    if not budget("sinusoid-maml-remat"):
        return records
    # Peak memory against inner steps, for each remat.
    rows, makers = {}, {}
    batch = sizes.meta_batches[-1]
    for remat in ("none", "step", "rollout"):
        for inner in sizes.inner_steps:
            learner = _sinusoid_maml(inner, remat)
            makers[(remat, inner)] = (jmeta.make_meta_step(learner, sampler, batch), learner)
            rows[f"remat={remat},inner_steps={inner}"] = _step_row(*makers[(remat, inner)])
    for name, timed in time_rows(rows, sizes).items():
        remat, inner = name.split(",")[0].split("=")[1], int(name.split("=")[-1])
        meta_step, learner = makers[(remat, inner)]
        records.append(
            record(
                "sinusoid-maml-remat",
                name,
                timed,
                shapes={"meta_batch": batch, "inner_steps": inner, "remat": remat},
                tasks_per_call=batch,
                correctness=_loss_after(meta_step, learner, 2),
                ceiling=ceiling,
            )
        )
    if not budget("sinusoid-maml-scaling"):
        return records
    # Scaling over 1, 2, 4, 8 devices: the same meta-batch on a growing mesh.
    rows, meshed = {}, {}
    for count in (1, 2, 4, 8):
        if count > len(jax.devices()):
            break
        meta_step = jmeta.make_meta_step(maml, sampler, sizes.scaling_batch, mesh=task_mesh(count))
        meshed[count] = meta_step
        rows[f"devices={count}"] = _step_row(meta_step, maml)
    timed_rows = time_rows(rows, sizes)
    one = statistics.median(timed_rows["devices=1"][2])
    for name, timed in timed_rows.items():
        count = int(name.split("=")[1])
        entry = record(
            "sinusoid-maml-scaling",
            name,
            timed,
            shapes={"meta_batch": sizes.scaling_batch},
            tasks_per_call=sizes.scaling_batch,
            correctness=_loss_after(meshed[count], maml, 2),
            ceiling=ceiling,
            mesh_shape=(count,),
        )
        entry["speed_up_over_one_device"] = one / entry["seconds_median"]
        records.append(entry)
    return records


def _torch_rows(sizes: Sizes) -> list[dict]:
    """learn2learn-style PyTorch MAML on the same sinusoid workload, where PyTorch is
    installed (never required); its ratio to jmeta's row of the same meta-batch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    from types import SimpleNamespace

    from jmeta.experiments._torch_baselines import sinusoid_maml_loop

    batch = sizes.meta_batches[0]
    config = SimpleNamespace(
        seed=0,
        shots=10,
        queries=10,
        inner_lr=0.01,
        torch_tasks=batch * 8,
        baseline_meta_batch=batch,
    )
    try:
        measured = sinusoid_maml_loop(config)
    except Exception as error:  # noqa: BLE001 - a baseline failing is reported, not fatal
        return [{"workload": "sinusoid-maml-torch", "row": "error", "error": repr(error)}]
    if measured is None:
        return []
    return [
        {
            "workload": "sinusoid-maml-torch",
            "row": f"meta_batch={batch}",
            "shapes": {"meta_batch": batch, "shots": 10, "queries": 10},
            "seconds_median": 1 / measured["meta_steps_per_second"],
            "tasks_per_second": measured["tasks_per_second"],
            "jmeta_speed_up": None,  # set by core_suite against its row of the same meta-batch
            "torch": measured,
        }
    ]


def fewshot_suite(sizes: Sizes, ceiling: dict, budget: Callable[[str], bool]) -> list[dict]:
    import jmeta

    images = jax.random.normal(jax.random.key(2), (20, 6, 28, 28, 1))
    sampler = jmeta.make_episode_sampler(images, 5, 1, 5)
    execution = jmeta.execution_preset("gpu" if jax.default_backend() != "cpu" else "cpu-conv")
    learners = {
        "maml": jmeta.make_meta_learner(
            jmeta.conv4_learner(
                jax.random.key(0), (28, 28, 1), 5, sizes.conv_filters, conv=execution.conv
            ),
            jmeta.algorithm_config("maml", loss="ce", inner_lr=0.4),
            execution,
        ),
        "protonet": jmeta.make_protonet(
            jmeta.conv4_learner(
                jax.random.key(0), (28, 28, 1), 0, sizes.conv_filters, conv=execution.conv
            ),
            5,
            execution=execution,
        ),
    }
    rows, steps = {}, {}
    for name, learner in learners.items():
        steps[name] = jmeta.make_meta_step(learner, sampler, sizes.conv_meta_batch)
        rows[name] = _step_row(steps[name], learner)
    records = []
    timed_rows = time_rows(rows, sizes)
    for name, timed in timed_rows.items():
        records.append(
            record(
                f"conv4-{name}-5way1shot",
                name,
                timed,
                shapes={"meta_batch": sizes.conv_meta_batch, "filters": sizes.conv_filters},
                tasks_per_call=sizes.conv_meta_batch,
                correctness=_loss_after(steps[name], learners[name], 3),
                ceiling=ceiling,
            )
        )
    records.extend(_torch_conv4_rows(sizes, statistics.median(timed_rows["maml"][2])))
    return records


def _torch_conv4_rows(sizes: Sizes, jmeta_seconds: float) -> list[dict]:
    """conv4 MAML through PyTorch (a learn2learn-style loop) and learn2learn's own ``MAML``
    where they are installed, on the same 5-way 1-shot episodes; each with jmeta's speed-up."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    from types import SimpleNamespace

    from jmeta.experiments import _torch_baselines as baselines

    config = SimpleNamespace(
        seed=0,
        filters=sizes.conv_filters,
        ways=5,
        shots=1,
        queries=5,
        image_size=28,
        meta_batch=sizes.conv_meta_batch,
    )
    made = {"torch-loop": lambda: baselines.conv4_maml_loop(config, 1)}
    try:
        maml_class = baselines.load_maml()
    except Exception:  # noqa: BLE001 - learn2learn is optional
        maml_class = None
    if maml_class is not None:
        made["learn2learn"] = lambda: baselines.learn2learn_conv4_maml(config, 1, maml_class)
    rows = []
    for name, make in made.items():
        try:
            built = make()
            if built is None:
                continue
            call, info = built
            seconds = alternating({name: call}, sizes.min_seconds, sizes.min_calls)[name]
        except Exception as error:  # noqa: BLE001 - a failing baseline is reported, not fatal
            rows.append(
                {"workload": "conv4-maml-5way1shot-torch", "row": name, "error": repr(error)}
            )
            continue
        median = statistics.median(seconds)
        rows.append(
            {
                "workload": "conv4-maml-5way1shot-torch",
                "row": name,
                "shapes": {"meta_batch": sizes.conv_meta_batch, "filters": sizes.conv_filters},
                "seconds_median": median,
                "seconds_spread": max(seconds) - min(seconds),
                "seconds_raw": seconds,
                "tasks_per_second": sizes.conv_meta_batch / median,
                "jmeta_speed_up": median / jmeta_seconds,
                "torch": info,
            }
        )
    return rows


def unsupervised_suite(sizes: Sizes, ceiling: dict, budget: Callable[[str], bool]) -> list[dict]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from jmeta.unsupervised import kmeans, pca
    from jmeta.unsupervised.distances import default_chunk_size
    from jmeta.unsupervised.kmeans import _kmeans
    from jmeta.unsupervised.pca import _pca

    iterations = 10
    rows, data = {}, {}
    for n in sizes.kmeans_rows:
        x = np.asarray(jax.random.normal(jax.random.key(n), (n, sizes.kmeans_features)), np.float32)
        init = x[: sizes.kmeans_clusters]
        data[n] = (x, init)
        static = dict(
            num_clusters=sizes.kmeans_clusters,
            init="array",
            n_init=1,
            chunk_size=default_chunk_size(n, sizes.kmeans_clusters),
            num_local_trials=2,
            mesh=None,
        )
        # The jitted core of jmeta.unsupervised.kmeans (the public function checks its
        # arguments on the host first), with tol=0: exactly `iterations` Lloyd iterations.
        call = jax.jit(
            lambda x, init, static=static: (
                _kmeans(
                    jax.random.key(0),
                    x,
                    jnp.ones(x.shape[0], x.dtype),
                    init,
                    jnp.int32(iterations),
                    jnp.float32(0.0),
                    **static,
                ).inertia
            )
        )
        rows[f"n={n}"] = (call, (jnp.asarray(x), jnp.asarray(init)))
    records = []
    for name, timed in time_rows(rows, sizes).items():
        n = int(name.split("=")[1])
        x, init = data[n]
        ours = kmeans(
            jax.random.key(0), x, sizes.kmeans_clusters, init=init, max_iter=iterations, tol=0.0
        )
        reference = KMeans(
            sizes.kmeans_clusters, init=init, n_init=1, max_iter=iterations, tol=0.0
        ).fit(x)
        entry = record(
            "kmeans-lloyd",
            name,
            timed,
            shapes={"n": n, "d": sizes.kmeans_features, "k": sizes.kmeans_clusters},
            tasks_per_call=None,
            correctness={
                "inertia_relative_to_sklearn": float(ours.inertia) / float(reference.inertia_),
                "iterations": int(ours.num_iters),
            },
            ceiling=ceiling,
        )
        entry["seconds_per_iteration"] = entry["seconds_median"] / max(int(ours.num_iters), 1)
        records.append(entry)
    if not budget("pca"):
        return records
    x = data[sizes.kmeans_rows[-1]][0]
    timed = time_rows(
        {
            "covariance_eigh": (
                jax.jit(
                    lambda x: (
                        _pca(
                            jax.random.key(0),
                            x,
                            num_components=8,
                            solver="covariance_eigh",
                            n_oversamples=0,
                            n_power_iters=0,
                            num_samples=x.shape[0],
                            mesh=None,
                        ).components
                    )
                ),
                (jnp.asarray(x),),
            )
        },
        sizes,
    )["covariance_eigh"]
    ours = pca(x, 8, solver="covariance_eigh")
    reference = PCA(8).fit(x)
    records.append(
        record(
            "pca",
            "covariance_eigh",
            timed,
            shapes={"n": x.shape[0], "d": x.shape[1], "components": 8},
            tasks_per_call=None,
            correctness={
                "explained_variance_max_relative_error": float(
                    np.max(
                        np.abs(
                            np.asarray(ours.explained_variance) / reference.explained_variance_ - 1
                        )
                    )
                )
            },
            ceiling=ceiling,
        )
    )
    return records


SUITE_FUNCTIONS = {"core": core_suite, "fewshot": fewshot_suite, "unsupervised": unsupervised_suite}


# ---- the command ------------------------------------------------------------------------


def run_bench(
    suites: tuple[str, ...],
    budget_seconds: float,
    out: str,
    sizes: Sizes = DEFAULT,
    command: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Runs ``suites`` inside ``budget_seconds`` and writes ``out/RECORD.json`` for every
    workload row, ``out/bench.json`` (everything), ``out/bench.md`` and the plots."""
    began = time.monotonic()
    skipped = []

    def within(workload: str) -> bool:
        """Whether ``workload`` may start; if not it is listed as skipped."""
        if time.monotonic() - began < budget_seconds:
            return True
        skipped.append(workload)
        return False

    environment = environment_record(command or sys.argv)
    ceiling = ceilings(sizes)
    records = []
    for suite in suites:
        if not within(f"suite {suite}"):
            continue
        if progress:
            print(
                f"jmeta bench: {suite} ({time.monotonic() - began:.0f} s of {budget_seconds:.0f})",
                file=sys.stderr,
                flush=True,
            )
        records.extend(SUITE_FUNCTIONS[suite](sizes, ceiling, within))
    report = {
        **environment,
        "suites": list(suites),
        "skipped": skipped,
        "budget_seconds": budget_seconds,
        "elapsed_seconds": time.monotonic() - began,
        "ceilings": ceiling,
        "records": records,
    }
    os.makedirs(out, exist_ok=True)
    for index, entry in enumerate(records):
        name = f"{index:02d}-{entry['workload']}-{entry['row']}".replace("=", "").replace(",", "-")
        atomic_write_json(
            os.path.join(out, f"{name}.json"), {**environment, "ceilings": ceiling, **entry}
        )
    atomic_write_json(os.path.join(out, "bench.json"), report)
    atomic_write_text(os.path.join(out, "bench.md"), markdown(report))
    report["plots"] = plot(records, out)
    return report


def markdown(report: dict) -> str:
    """The records as one markdown table under a line naming the device."""
    lines = [
        f"jmeta bench on {report['device_count']} x {report['device_kind']} "
        f"({report['backend']}), jax {report['jax']}, commit {report['git_commit'][:10]}"
        f"{' (dirty)' if report['git_dirty'] else ''}, {report['time']}",
        "",
        f"ceilings: float32 matmul {report['ceilings']['matmul_float32_flops_per_second']:.3g} "
        f"FLOP/s, bfloat16 {report['ceilings']['matmul_bfloat16_flops_per_second']:.3g}, copy "
        f"{report['ceilings']['copy_bytes_per_second']:.3g} B/s",
        "",
        "| workload | row | ms/step (median) | spread ms | tasks/s | compile s | peak MB | "
        "of matmul peak | correctness |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def number(value, scale=1.0, digits=3):
        return "" if value is None else f"{value * scale:.{digits}g}"

    for r in report["records"]:
        memory = (r.get("memory_analysis") or {}).get("total_bytes")
        correctness = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in (r.get("correctness") or {}).items()
        )
        lines.append(
            f"| {r['workload']} | {r['row']} | {number(r.get('seconds_median'), 1e3)} | "
            f"{number(r.get('seconds_spread'), 1e3)} | {number(r.get('tasks_per_second'))} | "
            f"{number(r.get('compile_seconds'))} | {number(memory, 1e-6)} | "
            f"{number(r.get('fraction_of_matmul_peak'))} | {correctness} |"
        )
    if report["skipped"]:
        lines += ["", f"skipped (over the budget): {', '.join(report['skipped'])}"]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], out: str) -> list[str]:
    """Tasks/s against meta-batch, peak memory against inner steps per remat, k-means
    seconds per iteration against n; the PNGs written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "jmeta bench: install matplotlib (pip install 'jmeta[experiments]') for plots",
            file=sys.stderr,
        )
        return []
    written = []

    def figure(name, series, xlabel, ylabel, log=True):
        if not series:
            return
        fig, axis = plt.subplots(figsize=(5, 3.5))
        for label, points in series.items():
            xs, ys = zip(*sorted(points))
            axis.plot(xs, ys, marker="o", label=label)
        if log:
            axis.set_xscale("log")
            axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.legend()
        fig.tight_layout()
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    by = lambda workload: [r for r in records if r["workload"] == workload]
    figure(
        "tasks_per_second",
        {
            "sinusoid MAML": [
                (r["shapes"]["meta_batch"], r["tasks_per_second"])
                for r in by("sinusoid-maml-meta-batch")
            ]
        }
        if by("sinusoid-maml-meta-batch")
        else {},
        "meta-batch size",
        "tasks / s",
    )
    remat = {}
    for r in by("sinusoid-maml-remat"):
        memory = (r.get("memory_analysis") or {}).get("total_bytes")
        if memory:
            remat.setdefault(f"remat={r['shapes']['remat']}", []).append(
                (r["shapes"]["inner_steps"], memory / 1e6)
            )
    figure("memory_per_inner_steps", remat, "inner steps", "peak memory (MB)", log=False)
    figure(
        "kmeans_seconds_per_iteration",
        {
            "k-means (Lloyd)": [
                (r["shapes"]["n"], r["seconds_per_iteration"]) for r in by("kmeans-lloyd")
            ]
        }
        if by("kmeans-lloyd")
        else {},
        "n (rows)",
        "seconds / iteration",
    )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jmeta bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--budget-seconds", type=float, default=480.0)
    parser.add_argument(
        "--out", default=os.path.join("runs", "bench", time.strftime("%Y%m%d-%H%M%S"))
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; for tests)")
    args = parser.parse_args(argv)
    if args.budget_seconds <= 0:
        parser.error(f"--budget-seconds must be positive, got {args.budget_seconds}")
    try:  # simulated devices for the scaling rows on CPU; only possible before JAX starts
        jax.config.update("jax_num_cpu_devices", 8)
    except RuntimeError:
        pass
    suites = SUITES if args.suite == "all" else (args.suite,)
    report = run_bench(
        suites,
        args.budget_seconds,
        args.out,
        TINY if args.tiny else DEFAULT,
        command=["jmeta", "bench", *(sys.argv[2:] if argv is None else argv)],
    )
    print(markdown(report))
    print(
        f"wrote {args.out}/bench.json, bench.md, {len(report['records'])} records and "
        f"{len(report['plots'])} plots",
        file=sys.stderr,
    )
    return 0
