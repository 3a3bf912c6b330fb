"""Data parallelism over a 1-D device mesh with an explicit replica axis.

Per-replica code runs under `jax.shard_map` with the axis name `BATCH_AXIS`; state is replicated,
batches are split along their leading axis. Collectives inside the step are written out by hand
(all_gather for negatives, pmean for losses and BN statistics).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices; Auto axes so shard_map controls placement."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def check_divisible(global_batch: int, num_devices: int, key: str = "config.batch_size") -> None:
    if global_batch % num_devices:
        raise ValueError(
            f"{key}={global_batch} is not divisible by the {num_devices} devices JAX sees; "
            f"set {key} to a multiple of {num_devices} (or change the device count).")


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns this process's numpy batch into global arrays split along the leading axis.

    Each process contributes its local rows; on one host this is a plain device_put.
    """
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
