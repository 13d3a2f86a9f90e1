"""Device mesh over all (global) devices and global batch placement.

One mesh with axes ``('data', 'fsdp')``. The batch's leading axis is split
over both axes; large parameters are split over ``'fsdp'`` (see
``training/sharding.py``). In a multi-process run every process holds only its share
of the global batch and ``make_global_batch`` stitches the shares into one
global ``jax.Array``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_SPEC = PartitionSpec(MESH_AXES)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Starts multi-process JAX; a no-op for a single process.

    Arguments left as None are read from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. If the process count is still
    unknown, JAX's own cluster auto-detection (SLURM, TPU pods, ...) is used
    when ``JAX_AUTO_DISTRIBUTED`` is ``1`` or ``true``; otherwise the run is single-process.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = _env_int("JAX_PROCESS_ID")
    if num_processes is None:
        if env.get("JAX_AUTO_DISTRIBUTED", "").lower() in ("1", "true"):
            try:
                jax.distributed.initialize()
            except ValueError as err:
                raise ValueError(
                    f"JAX_AUTO_DISTRIBUTED found no cluster to join ({err}); run under SLURM or "
                    "on a TPU pod, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                    "JAX_PROCESS_ID"
                ) from None
        return
    if num_processes == 1:
        return
    if coordinator_address is None or process_id is None:
        raise ValueError(
            f"multi-process run with num_processes={num_processes} needs a coordinator "
            "address and a process id; pass them or set JAX_COORDINATOR_ADDRESS and "
            "JAX_PROCESS_ID"
        )
    # JAX waits up to 5 minutes for every process, silently, then aborts with "another task
    # died": say what it waits for, so a wrong JAX_NUM_PROCESSES or a task that never started
    # is recognisable.
    logging.info(
        "process %d of %d: waiting for all %d processes (JAX_NUM_PROCESSES) to join at %s; one "
        "that never starts stops this one after 5 minutes",
        process_id,
        num_processes,
        num_processes,
        coordinator_address,
    )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info("all %d processes joined", num_processes)


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r} is not an integer") from None


def make_mesh(data: int = -1, fsdp: int = 1, devices: Any = None, slices: int = 1) -> Mesh:
    """A ``('data', 'fsdp')`` mesh over all global devices; -1 means "the rest".

    ``slices > 1`` is for devices in groups joined by a slower network: TPU slices of a
    multislice job (devices of distinct ``slice_index``), or else processes. The ``data`` axis is
    split across the groups and each ``fsdp`` row stays inside one group, so only the
    gradient all-reduce crosses the slow network, not the parameter all-gathers.
    """
    devices = jax.devices() if devices is None else list(devices)
    count = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh.data and mesh.fsdp cannot both be -1")
    if fsdp == -1:
        if data <= 0 or count % data:
            raise ValueError(
                f"mesh.data={data} does not divide the {count} devices; pick a divisor of "
                f"{count}, or mesh.data=-1"
            )
        fsdp = count // data
    if data == -1:
        if fsdp <= 0 or count % fsdp:
            raise ValueError(
                f"mesh.fsdp={fsdp} does not divide the {count} devices; pick a divisor of "
                f"{count}, or mesh.fsdp=1"
            )
        data = count // fsdp
    if data * fsdp != count:
        raise ValueError(
            f"mesh.data * mesh.fsdp = {data}*{fsdp} = {data * fsdp} but there are {count} "
            "devices; set mesh.data=-1 to use them all"
        )
    if slices == 1:
        return Mesh(mesh_utils.create_device_mesh((data, fsdp), devices=devices), MESH_AXES)
    # CPU and GPU devices carry slice_index 0 too: only distinct indices mean TPU slices.
    by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
    groups = {d.slice_index if by_slice else d.process_index for d in devices}
    if len(groups) != slices:
        found = len(groups)
        if by_slice:
            where, fix = f"{found} TPU slices", f"set mesh.slices={found}"
        else:
            where = f"{found} process{'es' if found > 1 else ''} of one slice"
            fix = (
                f"set mesh.slices={found} (with one TPU slice or none, each process counts as "
                f"a slice: run {slices} processes for mesh.slices={slices})"
            )
        raise ValueError(f"mesh.slices={slices} but the devices are in {where}; {fix}")
    if data % slices:
        raise ValueError(f"mesh.data={data} is not a multiple of mesh.slices={slices}")
    device_grid = mesh_utils.create_hybrid_device_mesh(
        (data // slices, fsdp), (slices, 1), devices, process_is_granule=not by_slice
    )
    return Mesh(device_grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``('data', 'fsdp')``, the rest whole."""
    return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def make_global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Turns this process's numpy share of the batch into global sharded arrays.

    Every process passes its own consecutive slice of the global batch (the
    global batch size is ``local size × process count``); the global batch
    must divide evenly over the mesh's ``data × fsdp`` devices.
    """
    sharding = batch_sharding(mesh)
    shards = mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]

    def place(x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("batch leaves need a leading batch axis; got a scalar")
        global_size = x.shape[0] * jax.process_count()
        if global_size % shards:
            raise ValueError(
                f"global batch size {global_size} does not divide over the {shards} "
                "mesh devices; pick a batch size that is a multiple of data*fsdp"
            )
        global_shape = (global_size,) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(place, local_batch)


def to_host(x: Any) -> np.ndarray:
    """A (possibly sharded, multi-process) array as one host numpy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
