"""Meta-batches over many devices with JAX's own machinery: a one-axis ``Mesh``,
``shard_map`` over the task axis, one all-reduce.

``make_meta_step(..., mesh=mesh)`` runs ``task_gradient`` below under ``jax.shard_map``:
every device receives the same replicated key and meta-parameters, draws the whole
meta-batch's task keys, samples its own slice of the tasks (no task ever crosses devices),
computes the meta-gradient of those tasks (``task_chunk`` applies per device) and the
mean over devices is one ``psum`` of one flat vector holding the gradient and the metrics.

Two traps decide the shape of this code, both measured with jax 0.10.2:

- Under plain ``jit`` with sharded tasks, ``lax.map`` (``task_chunk > 0``) runs over the
  sharded axis, so XLA gathers every task onto every device. ``shard_map`` makes the
  per-device program explicit instead, so chunks are chunks of the device's own tasks.
- Inside ``shard_map`` the meta-parameters are *invariant* over the task axis; the
  gradient of an invariant value used by device-varying tasks is summed over devices by
  the transpose of the implicit invariant-to-varying cast, which made meta-gradients
  300-540x too large. ``jax.lax.pcast(..., to="varying")`` before adapting makes the
  per-device gradient local, and the one explicit ``psum`` then averages it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TASK_AXIS = "tasks"


def task_mesh(devices: int | Sequence[jax.Device] | None = None, axis: str = TASK_AXIS) -> Mesh:
    """A one-axis mesh over ``devices``: a count (the first ``n`` of ``jax.devices()``, every
    process's), a list of devices, or ``None`` for all of them.

    Example::

      mesh = jmeta.task_mesh(8)
      meta_step = jmeta.make_meta_step(maml, sampler, 32, mesh=mesh)
    """
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} device(s) JAX sees "
                f"({available[0].platform}), got {devices}. On CPU, simulate more with "
                "jax.config.update('jax_num_cpu_devices', n) before JAX first runs anything"
            )
        chosen = available[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise ValueError(f"devices must be a count or a list of jax devices, got {devices!r}")
    return Mesh(np.asarray(chosen), (axis,))


def check_devices(devices: Any, **batches: int) -> int:
    """An experiment's ``devices`` field as an int (1: one device, no mesh; ``n``: the first
    ``n`` devices; 0: every device of every process), checked against the devices JAX sees
    and each of ``batches`` (name=size) that must split evenly over them."""
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 0:
        raise ValueError(
            f"devices must be 1 (one device), n > 1 (a mesh of n) or 0 (all), got {devices!r}"
        )
    if devices == 1:
        return 1
    mesh = mesh_for(int(devices))
    for name, size in batches.items():
        check_divides(name, size, mesh)
    return int(devices)


def mesh_for(devices: int) -> Mesh | None:
    """The task mesh of an experiment's ``devices`` field (``None`` for 1: no mesh)."""
    return None if devices == 1 else task_mesh(None if devices == 0 else devices)


def check_mesh(mesh: Any) -> str:
    """The name of ``mesh``'s one axis, or a ``ValueError`` saying what was expected."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. jmeta.task_mesh(n)), got {type(mesh).__name__}"
        )
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"mesh must have one axis (the task axis, named {TASK_AXIS!r} by convention), got "
            f"axes {mesh.axis_names} of shape {tuple(mesh.devices.shape)}"
        )
    return mesh.axis_names[0]


def check_divides(name: str, size: int, mesh: Mesh) -> int:
    """``size // devices``, or a ``ValueError`` when ``size`` does not split evenly over the
    mesh (a ragged split would weight some devices' tasks more than others)."""
    devices = mesh.devices.size
    if size % devices:
        below, above = size // devices * devices, math.ceil(size / devices) * devices
        raise ValueError(
            f"{name}={size} must be a multiple of the mesh's {devices} devices so every device "
            f"gets the same number; use {below or devices} or {above}"
        )
    return size // devices


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value every device of ``mesh`` holds whole."""
    return NamedSharding(mesh, PartitionSpec())


def rows(mesh: Mesh) -> NamedSharding:
    """The sharding of an array split along its first axis over ``mesh``'s axis."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """``tree`` on every device of ``mesh``, from the same host value in every process.

    ``make_array_from_callback`` asks each process only for its own devices' copies, so the
    same call works with one process and with many (``jax.distributed``).
    """
    sharding = replicated(mesh)

    def put(leaf):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree_util.tree_map(put, tree)


def pad_rows(arrays: Any, mesh: Mesh) -> Any:
    """Each array of ``arrays`` (equal first axes) zero-padded to a multiple of ``mesh``'s
    size and split by rows over it. Each process passes the whole array and keeps only its
    own devices' rows; callers give padded rows zero weight."""
    sharding = rows(mesh)

    def put(x):
        value = np.asarray(x)
        padding = -value.shape[0] % mesh.devices.size
        value = np.pad(value, [(0, padding)] + [(0, 0)] * (value.ndim - 1))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree_util.tree_map(put, arrays)


def sum_over(tree: Any, axis: str) -> Any:
    """The sum of ``tree`` over mesh ``axis`` as one ``psum`` of one flat vector: XLA emits
    one all-reduce whatever the tree's size, instead of relying on its combiner."""
    flat, unravel = ravel_pytree(tree)
    return unravel(jax.lax.psum(flat, axis))


def mean_over(tree: Any, axis: str) -> Any:
    """The mean of ``tree`` over mesh ``axis``, one all-reduce (``sum_over``)."""
    size = jax.lax.axis_size(axis)
    return jax.tree_util.tree_map(lambda leaf: leaf / size, sum_over(tree, axis))


def sharded_task_gradient(
    meta_grad: Callable,
    sample_task: Callable,
    meta_batch: int,
    mesh: Mesh,
) -> Callable:
    """``(meta_params, key, *progress) -> (grads, metrics)``, replicated in and out, for the
    meta-batch of ``meta_batch`` tasks drawn from ``key`` exactly as ``sample_tasks`` draws
    them, each device computing its own tasks' share (``progress``: an annealed config's)."""
    axis = check_mesh(mesh)
    per_device = check_divides("meta_batch", meta_batch, mesh)

    def per_device_gradient(meta_params, key, *progress):
        # Every device splits the same key, so task i is the task one device would draw.
        keys = jax.random.split(key, meta_batch)
        first = jax.lax.axis_index(axis) * per_device
        own_keys = jax.lax.dynamic_slice_in_dim(keys, first, per_device)
        tasks = jax.vmap(sample_task)(own_keys)
        local_params = jax.lax.pcast(meta_params, axis, to="varying")
        grads, metrics = meta_grad(local_params, tasks, *progress)
        return mean_over((grads, metrics), axis)

    def task_gradient(meta_params, key, *progress):
        return jax.shard_map(
            per_device_gradient,
            mesh=mesh,
            in_specs=(PartitionSpec(),) * (2 + len(progress)),
            out_specs=(PartitionSpec(), PartitionSpec()),
        )(meta_params, key, *progress)

    return task_gradient


def sharded_task_mean(task_mean: Callable, mesh: Mesh, num_tasks: int) -> Callable:
    """``task_mean(params, tasks) -> (loss, metrics)`` (means over tasks) with the tasks split
    over ``mesh`` and the per-device means averaged by one ``psum``; differentiable from
    outside (``jax.grad`` of it is the gradient of the whole mean)."""
    axis = check_mesh(mesh)
    check_divides("the number of tasks", num_tasks, mesh)

    def per_device(params, tasks):
        return mean_over(task_mean(jax.lax.pcast(params, axis, to="varying"), tasks), axis)

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis)),
        out_specs=PartitionSpec(),
    )


def start_processes(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    detect: bool = False,
    cpu_devices: int | None = None,
) -> None:
    """Joins this process to a ``jax.distributed`` run, before JAX first runs anything.

    Args:
      coordinator: ``HOST:PORT`` of process 0 (default: ``JAX_COORDINATOR_ADDRESS``).
      num_processes, process_id: this run's process count and this process's index.
      detect: let JAX find all three from a cluster's environment (SLURM, Open MPI,
        Kubernetes, Cloud TPU) where they are not given.
      cpu_devices: simulate this many CPU devices in this process (for trying a mesh on a
        laptop; it must be set before JAX's backend starts, which this checks).
    """
    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(cpu_devices))
    if detect or coordinator is not None or num_processes is not None or process_id is not None:
        jax.distributed.initialize(coordinator, num_processes, process_id)
