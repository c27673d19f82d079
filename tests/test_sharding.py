"""Meta-batches, k-means and PCA over 8 simulated CPU devices equal one device's.

The device count is fixed when JAX's backend starts, so the sharded side runs in a
subprocess (``tests/multidevice_worker.py``) that reports what it measured; each test
asserts one property of that report. The traps these catch are in ``jmeta.sharding``'s
docstring: every device computing every task under plain ``jit`` with chunks (an
all-gather of the tasks), and meta-gradients summed over devices without ``pcast``.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

import jmeta
from jmeta.sharding import check_divides, task_mesh

WORKER = os.path.join(os.path.dirname(__file__), "multidevice_worker.py")
ALGORITHMS = ("maml", "reptile", "protonet")
CASES = [f"{name}/{chunk}" for name in ALGORITHMS for chunk in (0, 2)] + ["mamlpp/0"]


@pytest.fixture(scope="module")
def report():
    done = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_worker_sees_eight_devices(report):
    assert report["devices"] == 8


@pytest.mark.parametrize("case", CASES)
def test_sharded_meta_steps_equal_one_device(report, case):
    result = report["gradients"][case]
    # Float rounding of a sum in another order, far below what the steps moved: a
    # meta-gradient summed over devices instead of averaged (8x) would be far above it.
    assert result["params"] < 1e-5 * max(1.0, result["scale"])
    assert result["params"] < 1e-2 * result["moved"]
    assert result["metrics"] < 1e-4
    assert result["replicated"]


def test_twenty_scanned_steps_match(report):
    result = report["gradients"]["maml/2"]
    assert result["steps"] == 20
    assert result["params"] < 1e-2 * result["moved"]


@pytest.mark.parametrize("chunk", [0, 2])
def test_compiled_step_has_one_all_reduce_and_no_gather(report, chunk):
    result = report["gradients"][f"maml/{chunk}"]
    assert result["all_reduce"] == 1  # the gradient and the metrics, one flat vector
    assert result["all_gather"] == 0  # no device sees another device's tasks
    assert result["all_to_all"] == 0


def test_sharded_kmeans_equals_one_device(report):
    result = report["unsupervised"]["kmeans"]
    assert result["labels_equal"]
    assert result["centres"] < 1e-4
    assert result["inertia_relative"] < 1e-5


def test_sharded_kmeans_relocates_empty_clusters_like_one_device(report):
    result = report["unsupervised"]["kmeans"]
    assert result["relocated_far_centre"] < 100  # the centre at 1000 took a data point
    assert result["relocated_labels_equal"]
    assert result["relocated_centres"] < 1e-4
    assert result["relocated_rows"] == 403  # the padding rows are cut off again


def test_sharded_pca_equals_one_device(report):
    result = report["unsupervised"]["pca"]
    assert result["components"] < 1e-4
    assert result["variance_relative"] < 1e-5


def test_meta_learners_on_a_mesh_equal_one_device(report):
    result = report["meta_learners"]
    assert result["supervised_loss"] < 1e-4 * max(1.0, result["supervised_loss_moved"])
    assert result["supervised_loss_moved"] > 0
    assert result["unsupervised_labels_equal"]
    assert result["unsupervised_params"] < 1e-4


def test_explicit_axes_mesh_gives_the_same_numbers(report):
    assert report["errors"]["explicit_axes"] < 1e-6


@pytest.mark.parametrize(
    "case, words",
    [
        ("ragged", ["meta_batch=12", "multiple", "8 devices", "use 8 or 16"]),
        ("too_many", ["devices", "9", "jax_num_cpu_devices"]),
        ("two_axes", ["one axis", "('tasks', 'model')"]),
    ],
)
def test_bad_meshes_are_named_before_compiling(report, case, words):
    message = report["errors"][case]
    assert message is not None and message.startswith("ValueError")
    for word in words:
        assert word in message


def test_devices_field_is_checked_against_the_devices_here():
    from jmeta.config import override
    from jmeta.experiments import sinusoid

    count = len(jax.devices())
    with pytest.raises(ValueError, match=f"devices must be between 1 and the {count} device"):
        override(sinusoid.Config(), [f"devices={count + 1}"])
    with pytest.raises(ValueError, match="devices must be 1"):
        override(sinusoid.Config(), ["devices=-1"])


def test_one_device_mesh_checks_run_here():
    mesh = task_mesh(1)
    assert mesh.axis_names == ("tasks",)
    assert check_divides("meta_batch", 5, mesh) == 5
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        learner = jmeta.make_meta_learner(jmeta.mlp_learner(jax.random.key(0), hidden=(4,)))
        jmeta.make_meta_step(learner, jmeta.make_sinusoid_sampler(2, 2), 4, mesh="tasks")
    with pytest.raises(ValueError, match="devices must be a count or a list"):
        task_mesh("gpu")
