"""Runs in its own process with 8 simulated CPU devices (``tests/test_sharding.py`` starts
it): the device count is fixed when JAX's backend starts, so it cannot change inside the
test process. Prints one JSON object of measured differences, HLO collective counts and
error messages, which the tests assert on.
"""

import json
import sys
import warnings

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

import jmeta  # noqa: E402
from jmeta.sharding import task_mesh  # noqa: E402
from jmeta.unsupervised import kmeans, pca  # noqa: E402

META_BATCH = 16


def max_difference(a, b) -> float:
    leaves = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
            lambda u, v: np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))), a, b
        )
    )
    return float(max(leaves))


def largest(tree) -> float:
    return float(max(np.max(np.abs(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(tree)))


def compare(meta_learner, sampler, steps: int, mesh, hlo: bool = False) -> dict:
    """One device against the mesh: one step's gradient-driven state and ``steps`` scanned steps."""
    key = jax.random.key(1)
    length = 100 if meta_learner.config.annealed else None  # MAML++ anneals over a run
    one = jmeta.make_meta_step(meta_learner, sampler, META_BATCH, num_steps=length)
    many = jmeta.make_meta_step(meta_learner, sampler, META_BATCH, mesh=mesh, num_steps=length)
    single, single_metrics = one.run(one.init(meta_learner.init()), key, steps)
    sharded, sharded_metrics = many.run(many.init(meta_learner.init()), key, steps)
    start = meta_learner.init()
    moved = max_difference(single.meta_params, start)
    # The scanned steps' program, as compiled for the call above (a cache hit): its loop
    # body is one meta-step.
    compiled = many.run.lower(many.init(start), key, steps).compile().as_text() if hlo else ""
    return {
        "params": max_difference(single.meta_params, sharded.meta_params),
        "moved": moved,
        "scale": largest(single.meta_params),
        "metrics": max_difference(single_metrics, sharded_metrics),
        "steps": int(sharded.step),
        "replicated": all(
            leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
            for leaf in jax.tree_util.tree_leaves(sharded)
        ),
        "all_reduce": compiled.count("all-reduce("),
        "all_gather": compiled.count("all-gather("),
        "all_to_all": compiled.count("all-to-all("),
    }


def gradient_cases(mesh) -> dict:
    sine = jmeta.make_sinusoid_sampler(5, 5)
    mlp = jmeta.mlp_learner(jax.random.key(0), hidden=(16, 16))
    results = {}
    # MAML++ (each step's training progress goes into shard_map beside the key) stands in
    # for Meta-SGD, which differs from MAML only in the shape of a rate.
    for name in ("maml", "mamlpp", "reptile"):
        overrides = {"per_step_norm": False, "num_inner_steps": 2} if name == "mamlpp" else {}
        for chunk in (0, 2) if name != "mamlpp" else (0,):
            execution = jmeta.Execution(task_chunk=chunk)
            config = jmeta.algorithm_config(name, **overrides)
            learner = jmeta.make_meta_learner(mlp, config, execution)
            steps = 20 if (name, chunk) == ("maml", 2) else 3
            hlo = name == "maml"  # the collectives of the compiled step, chunked and not
            results[f"{name}/{chunk}"] = compare(learner, sine, steps, mesh, hlo)
    images = jax.random.normal(jax.random.key(2), (10, 6, 8, 8, 1))
    episodes = jmeta.make_episode_sampler(images, ways=3, shots=2, queries=2)
    embedding = jmeta.conv4_learner(jax.random.key(3), (8, 8, 1), ways=0, filters=4, strided=True)
    for chunk in (0, 2):
        protonet = jmeta.make_protonet(embedding, 3, execution=jmeta.Execution(task_chunk=chunk))
        results[f"protonet/{chunk}"] = compare(protonet, episodes, 3, mesh)
    return results


def unsupervised_cases(mesh) -> dict:
    key = jax.random.key(4)
    centres = 4 * jax.random.normal(key, (5, 6))
    # 403 rows: padded to 408 on the mesh with rows of weight zero.
    x = np.asarray(jax.random.normal(jax.random.key(5), (403, 6)) + centres[np.arange(403) % 5])
    one = kmeans(jax.random.key(6), x, 5, n_init=2)
    many = kmeans(jax.random.key(6), x, 5, n_init=2, mesh=mesh)
    # A far-away initial centre empties its cluster: the relocation path.
    far = np.asarray(centres).copy()
    far[0] = 1000.0
    relocated_one = kmeans(jax.random.key(6), x, 5, init=far, max_iter=3)
    relocated_many = kmeans(jax.random.key(6), x, 5, init=far, max_iter=3, mesh=mesh)
    first = pca(x, 3)
    spread = pca(x, 3, mesh=mesh)
    return {
        "kmeans": {
            "centres": max_difference(one.centres, many.centres),
            "inertia_relative": float(abs(one.inertia - many.inertia) / one.inertia),
            "labels_equal": bool(np.array_equal(one.labels, many.labels)),
            "relocated_centres": max_difference(relocated_one.centres, relocated_many.centres),
            "relocated_labels_equal": bool(
                np.array_equal(relocated_one.labels, relocated_many.labels)
            ),
            "relocated_rows": int(relocated_many.labels.shape[0]),
            "relocated_far_centre": float(np.max(np.abs(relocated_many.centres[0]))),
        },
        "pca": {
            "components": max_difference(first.components, spread.components),
            "variance_relative": max_difference(
                first.explained_variance / first.explained_variance[0],
                spread.explained_variance / first.explained_variance[0],
            ),
        },
    }


def meta_learner_cases(mesh) -> dict:
    """The supervised and unsupervised meta-learners with and without ``mesh``."""
    from jmeta.supervised import SupervisedMetaLearner
    from jmeta.unsupervised import UnsupervisedMetaLearner

    tasks = jmeta.sample_tasks(jmeta.make_sinusoid_sampler(5, 5), jax.random.key(8), 16)
    learners = [
        jmeta.mlp_learner(jax.random.key(0), hidden=(8,)),
        jmeta.linear_learner(jax.random.key(1)),
    ]
    histories = [
        SupervisedMetaLearner(learners, loss="mse", optimizer="adam", max_iter=5, mesh=where).train(
            *tasks.support, *tasks.query
        )
        for where in (None, mesh)
    ]
    centres = 3 * jax.random.normal(jax.random.key(9), (6, 12))
    points = np.asarray(
        jax.random.normal(jax.random.key(10), (240, 12)) * 0.5 + centres[np.arange(240) % 6]
    )
    models = [
        UnsupervisedMetaLearner(
            ways=3,
            shots=1,
            queries=2,
            rounds=1,
            steps_per_round=4,
            meta_batch=8,
            n_components=4,
            n_partitions=2,
            progress=False,
            log_every=2,
            mesh=where,
        ).fit(points)
        for where in (None, mesh)
    ]
    return {
        "supervised_loss": max_difference(histories[0]["loss"], histories[1]["loss"]),
        "supervised_loss_moved": float(abs(histories[0]["loss"][-1] - histories[0]["loss"][0])),
        "unsupervised_params": max_difference(models[0].meta_params_, models[1].meta_params_),
        "unsupervised_labels_equal": bool(
            np.array_equal(models[0].pseudo_labels_, models[1].pseudo_labels_)
        ),
    }


def error_cases(mesh) -> dict:
    mlp = jmeta.mlp_learner(jax.random.key(0), hidden=(8,))
    maml = jmeta.make_meta_learner(mlp, jmeta.algorithm_config("maml"))
    sine = jmeta.make_sinusoid_sampler(5, 5)
    messages = {}
    for name, call in {
        "ragged": lambda: jmeta.make_meta_step(maml, sine, 12, mesh=mesh),
        "too_many": lambda: task_mesh(9),
        "two_axes": lambda: jmeta.make_meta_step(
            maml, sine, 16, mesh=jax.make_mesh((4, 2), ("tasks", "model"))
        ),
    }.items():
        try:
            call()
            messages[name] = None
        except (ValueError, TypeError) as error:
            messages[name] = f"{type(error).__name__}: {error}"
    # jax.make_mesh's default (explicit) axes: the same step, the same numbers.
    explicit = jax.make_mesh((8,), ("tasks",))
    messages["explicit_axes"] = compare(maml, sine, 2, explicit)["params"]
    return messages


def main() -> None:
    warnings.simplefilter("error")  # e.g. "donated buffers were not usable"
    mesh = task_mesh(8)
    out = {"devices": len(jax.devices())}
    groups = sys.argv[1:] or ["gradients", "unsupervised", "meta_learners", "errors"]
    if "gradients" in groups:
        out["gradients"] = gradient_cases(mesh)
    if "unsupervised" in groups:
        out["unsupervised"] = unsupervised_cases(mesh)
    if "meta_learners" in groups:
        out["meta_learners"] = meta_learner_cases(mesh)
    if "errors" in groups:
        out["errors"] = error_cases(mesh)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
