"""Benchmark of jmeta's k-means and PCA against scikit-learn on the same data (JSON + table).

Command:  jmeta run bench-unsupervised
Runtime:  about 4 minutes on a 2-core laptop CPU (the 1M-row data alone take 0.5 GB).
Expected: per Lloyd iteration, jmeta at or below scikit-learn's seconds at 20k x 64
          (k = 64) and 100k x 128 (k = 256) from the same initial centres with inertia
          equal to 1e-5 relative; k-means++ and PCA within small factors of
          scikit-learn's; the ratios are in ``ratios`` of the JSON.

The Lloyd workloads also time ``n_init=restarts`` k-means++ fits (one ``vmap``) against
as many single fits one after another, both jmeta. Each workload runs both libraries on the same
float32 data, rows alternating in rounds
(this machine's speed drifts 10-30%), and keeps each row's fastest round. Lloyd rows run
``lloyd_iters`` iterations from the same initial centres with ``tol=0``; their seconds
per iteration are the fit's seconds over its ``n_iter_``. Compile seconds are the first
call's time less a warm call's. Peak memory is XLA's temporary buffers of the compiled
jmeta function (``memory_analysis``); scikit-learn has no such figure (``null``). The
mini-batch rows run ``minibatch_steps`` steps of ``batch_size`` rows with early stopping
and re-seeding off in both libraries, so their seconds per step compare the same work;
jmeta streams each batch from host memory as ``MiniBatchKMeans`` would on data larger
than the device.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.benchmark import best_of_rounds, machine_record, memory_record, write_results
from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.validation import check_fields


@dataclasses.dataclass(frozen=True)
class Config:
    lloyd_shapes: tuple[str, ...] = ("20000x64x64", "100000x128x256")  # rows x features x clusters
    lloyd_iters: int = 20
    minibatch_shape: str = "1000000x128x1024"
    minibatch_steps: int = 200
    batch_size: int = 1024
    pca_shape: str = "50000x784x50"  # rows x features x components
    pca_solvers: tuple[str, ...] = ("covariance_eigh", "full", "randomized")
    restarts: int = 4  # n_init against as many single fits
    rounds: int = 3
    seed: int = 0


def _shape(text: str, name: str) -> tuple[int, int, int]:
    try:
        a, b, c = (int(part) for part in text.split("x"))
    except ValueError:
        raise ValueError(f"{name} must look like ROWSxFEATURESxK, got {text!r}") from None
    if min(a, b, c) < 1 or c > a:
        raise ValueError(f"{name}={text!r}: every size must be positive and K at most the rows")
    return a, b, c


def _data(rows: int, features: int, seed: int) -> np.ndarray:
    """Gaussian blobs (float32): 100 random centres, unit spread, so clusters overlap like real
    data."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, features)) * 3
    return (centres[rng.integers(0, 100, rows)] + rng.standard_normal((rows, features))).astype(
        np.float32
    )


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _temp_mib(jitted, *args, **static) -> float | None:
    memory = memory_record(jitted.lower(*args, **static).compile())
    return None if memory is None else memory["temp_bytes"] / 2**20


def _lloyd(shape: str, config: Config) -> list[dict]:
    import sklearn.cluster

    from jmeta.unsupervised import kmeans, kmeans_plusplus
    from jmeta.unsupervised.distances import default_chunk_size
    from jmeta.unsupervised.kmeans import _kmeans

    rows, features, k = _shape(shape, "lloyd_shapes")
    x = _data(rows, features, config.seed)
    init = x[np.random.default_rng(config.seed + 1).choice(rows, k, replace=False)]
    device_x = jnp.asarray(x)
    out = {}

    def ours():
        out["jmeta"] = jax.block_until_ready(
            kmeans(0, device_x, k, init=init, max_iter=config.lloyd_iters, tol=0.0)
        )

    def theirs():
        out["sklearn"] = sklearn.cluster.KMeans(
            k, init=init, n_init=1, max_iter=config.lloyd_iters, tol=0.0, algorithm="lloyd"
        ).fit(x)

    def ours_pp():
        jax.block_until_ready(kmeans_plusplus(config.seed, device_x, k))

    def theirs_pp():
        sklearn.cluster.kmeans_plusplus(x, k, random_state=config.seed)

    def restarts():
        jax.block_until_ready(
            kmeans(0, device_x, k, n_init=config.restarts, max_iter=config.lloyd_iters, tol=0.0)
        )

    def single_fits():
        for seed in range(config.restarts):
            jax.block_until_ready(kmeans(seed, device_x, k, max_iter=config.lloyd_iters, tol=0.0))

    first = _timed(ours)
    first_pp = _timed(ours_pp)
    restarts()
    single_fits()
    best = best_of_rounds(
        {
            "jmeta": ours,
            "sklearn": theirs,
            "jmeta_pp": ours_pp,
            "sklearn_pp": theirs_pp,
            "restarts": restarts,
            "single_fits": single_fits,
        },
        config.rounds,
    )
    ours_iters, their_iters = int(out["jmeta"].num_iters), int(out["sklearn"].n_iter_)
    memory = _temp_mib(
        _kmeans,
        jax.random.key(0),
        device_x,
        jnp.ones(rows),
        jnp.asarray(init),
        jnp.asarray(1),
        jnp.asarray(0.0),
        num_clusters=k,
        init="array",
        n_init=1,
        chunk_size=default_chunk_size(rows, k),
        num_local_trials=2,
        mesh=None,
    )
    common = {"workload": "lloyd", "shape": shape}
    return [
        {
            **common,
            "library": "jmeta",
            "seconds_per_iter": best["jmeta"] / ours_iters,
            "iters": ours_iters,
            "compile_seconds": first - best["jmeta"],
            "kmeanspp_seconds": best["jmeta_pp"],
            "kmeanspp_compile_seconds": first_pp - best["jmeta_pp"],
            "inertia": float(out["jmeta"].inertia),
            "peak_temp_mib": memory,
            "restarts": config.restarts,
            "restarts_seconds": best["restarts"],
            "single_fits_seconds": best["single_fits"],
        },
        {
            **common,
            "library": "scikit-learn",
            "seconds_per_iter": best["sklearn"] / their_iters,
            "iters": their_iters,
            "compile_seconds": 0.0,
            "kmeanspp_seconds": best["sklearn_pp"],
            "kmeanspp_compile_seconds": 0.0,
            "inertia": float(out["sklearn"].inertia_),
            "peak_temp_mib": None,
        },
    ]


def _minibatch(config: Config) -> list[dict]:
    import sklearn.cluster

    rows, features, k = _shape(config.minibatch_shape, "minibatch_shape")
    x = _data(rows, features, config.seed)
    init = x[np.random.default_rng(config.seed + 1).choice(rows, k, replace=False)]

    def ours():
        _jmeta_minibatch(x, k, init, config)

    def theirs():
        # partial_fit is scikit-learn's streaming step: one batch, no stopping rule.
        model = sklearn.cluster.MiniBatchKMeans(
            k, init=init, n_init=1, random_state=0, reassignment_ratio=0.0
        )
        rng = np.random.default_rng(0)
        for _ in range(config.minibatch_steps):
            model.partial_fit(x[rng.integers(0, rows, config.batch_size)])

    first = _timed(ours)
    best = best_of_rounds({"jmeta": ours, "sklearn": theirs}, config.rounds)
    common = {
        "workload": "minibatch",
        "shape": config.minibatch_shape,
        "steps": config.minibatch_steps,
    }
    return [
        {
            **common,
            "library": "jmeta",
            "seconds_per_step": best["jmeta"] / config.minibatch_steps,
            "compile_seconds": first - best["jmeta"],
        },
        {
            **common,
            "library": "scikit-learn",
            "seconds_per_step": best["sklearn"] / config.minibatch_steps,
            "compile_seconds": 0.0,
        },
    ]


def _jmeta_minibatch(x: np.ndarray, k: int, init: np.ndarray, config: Config):
    """``minibatch_steps`` streamed steps of jmeta's mini-batch update (the loop of
    ``minibatch_kmeans`` without its stopping rules), synchronised once at the end."""
    from jmeta.unsupervised.minibatch import init_state, minibatch_step

    rng = np.random.default_rng(0)
    state = init_state(jnp.asarray(init))
    weights = jnp.ones(config.batch_size, jnp.float32)
    key = jax.random.key(0)
    for i in range(config.minibatch_steps):
        batch = jnp.asarray(x[rng.integers(0, x.shape[0], config.batch_size)])
        state = minibatch_step(
            state,
            jax.random.fold_in(key, i),
            batch,
            weights,
            jnp.asarray(0.0, jnp.float32),
            num_samples=x.shape[0],
            reassignment_ratio=0.0,
            max_no_improvement=None,
        )
    return jax.block_until_ready(state)


def _pca(config: Config) -> list[dict]:
    import sklearn.decomposition

    from jmeta.unsupervised import pca

    rows, features, components = _shape(config.pca_shape, "pca_shape")
    rng = np.random.default_rng(config.seed)
    # Low-rank signal plus noise, like images: the leading components carry most of the variance.
    x = (
        rng.standard_normal((rows, 100)) @ rng.standard_normal((100, features))
        + 0.5 * rng.standard_normal((rows, features))
        + rng.random(features)
    ).astype(np.float32)
    device_x = jnp.asarray(x)
    result = []
    for solver in config.pca_solvers:
        out = {}

        def ours():
            out["jmeta"] = jax.block_until_ready(
                pca(device_x, components, solver=solver, key=config.seed)
            )

        def theirs():
            out["sklearn"] = sklearn.decomposition.PCA(
                components, svd_solver=solver, random_state=config.seed
            ).fit(x)

        first = _timed(ours)
        best = best_of_rounds({"jmeta": ours, "sklearn": theirs}, config.rounds)
        ours_ratio = float(jnp.sum(out["jmeta"].explained_variance_ratio))
        their_ratio = float(np.sum(out["sklearn"].explained_variance_ratio_))
        common = {"workload": "pca", "shape": config.pca_shape, "solver": solver}
        result += [
            {
                **common,
                "library": "jmeta",
                "seconds": best["jmeta"],
                "compile_seconds": first - best["jmeta"],
                "explained_variance_ratio": ours_ratio,
            },
            {
                **common,
                "library": "scikit-learn",
                "seconds": best["sklearn"],
                "compile_seconds": 0.0,
                "explained_variance_ratio": their_ratio,
            },
        ]
    return result


def _ratios(rows: list[dict]) -> dict:
    def pair(workload, key, **match):
        found = {
            r["library"]: r[key]
            for r in rows
            if r["workload"] == workload and all(r.get(k) == v for k, v in match.items())
        }
        return found["jmeta"] / found["scikit-learn"]

    ratios = {}
    for shape in {r["shape"] for r in rows if r["workload"] == "lloyd"}:
        ratios[f"lloyd {shape}: jmeta s/iter over scikit-learn"] = pair(
            "lloyd", "seconds_per_iter", shape=shape
        )
        ratios[f"k-means++ {shape}: jmeta s over scikit-learn"] = pair(
            "lloyd", "kmeanspp_seconds", shape=shape
        )
        ours = next(
            r
            for r in rows
            if r["workload"] == "lloyd" and r["shape"] == shape and r["library"] == "jmeta"
        )
        ratios[
            f"restarts {shape}: n_init={ours['restarts']} s over {ours['restarts']} single fits"
        ] = ours["restarts_seconds"] / ours["single_fits_seconds"]
        inertias = {
            r["library"]: r["inertia"]
            for r in rows
            if r["workload"] == "lloyd" and r["shape"] == shape
        }
        ratios[f"lloyd {shape}: inertia relative difference"] = abs(
            inertias["jmeta"] / inertias["scikit-learn"] - 1
        )
    if any(r["workload"] == "minibatch" for r in rows):
        ratios["mini-batch: jmeta s/step over scikit-learn"] = pair("minibatch", "seconds_per_step")
    pca_rows = [r for r in rows if r["workload"] == "pca"]
    if pca_rows:
        fastest = min(r["seconds"] for r in pca_rows if r["library"] == "scikit-learn")
        for solver in {r["solver"] for r in pca_rows}:
            ratios[f"pca {solver}: jmeta s over scikit-learn's fastest solver"] = (
                min(
                    r["seconds"]
                    for r in pca_rows
                    if r["library"] == "jmeta" and r["solver"] == solver
                )
                / fastest
            )
    return ratios


def _table(rows: list[dict]) -> str:
    header = [
        "workload",
        "shape",
        "library",
        "s per iter / step / fit",
        "compile s",
        "k-means++ s",
        "inertia / EVR",
        "peak temp MiB",
    ]
    lines = []
    for r in rows:
        seconds = r.get("seconds_per_iter", r.get("seconds_per_step", r.get("seconds")))
        quality = r.get("inertia", r.get("explained_variance_ratio"))
        name = r["workload"] + (f" ({r['solver']})" if "solver" in r else "")
        lines.append(
            [
                name,
                r["shape"],
                r["library"],
                f"{seconds:.4f}",
                f"{r['compile_seconds']:.2f}",
                "" if "kmeanspp_seconds" not in r else f"{r['kmeanspp_seconds']:.3f}",
                "" if quality is None else (f"{quality:.6g}"),
                "" if r.get("peak_temp_mib") is None else f"{r['peak_temp_mib']:.1f}",
            ]
        )
    return markdown_table(header, lines)


def check(config: Config) -> None:
    """Every field checked before the run folder is made or any data read."""
    check_fields(
        config, positive_ints=("lloyd_iters", "minibatch_steps", "batch_size", "restarts", "rounds")
    )
    for shape in config.lloyd_shapes:
        _shape(shape, "lloyd_shapes")
    if config.minibatch_shape:
        _shape(config.minibatch_shape, "minibatch_shape")
    if config.pca_shape:
        _shape(config.pca_shape, "pca_shape")


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    import sklearn

    rows: list[dict] = []
    machine = {**machine_record(), "scikit-learn": sklearn.__version__}

    def save():
        results = {
            "machine": machine,
            "config": dataclasses.asdict(config),
            "rows": rows,
            "ratios": _ratios(rows),
        }
        table = (
            _table(rows) + "\n" + "\n".join(f"- {k}: {v:.3f}" for k, v in results["ratios"].items())
        )
        write_results(run, "bench_unsupervised", results, table + "\n")
        return results

    for shape in config.lloyd_shapes:
        rows += _lloyd(shape, config)
        save()
    if config.minibatch_shape:
        rows += _minibatch(config)
        save()
    if config.pca_shape:
        rows += _pca(config)
    results = save()
    print("\n" + _table(rows))
    for name, value in results["ratios"].items():
        print(f"- {name}: {value:.3f}")
    return results
