"""Data parallelism over a 1-D device mesh with an explicit replica axis.

Per-replica code runs under `jax.shard_map` with the axis name `BATCH_AXIS`; state is replicated,
batches are split along their leading axis. Collectives inside the step are written out by hand
(all_gather for negatives, pmean for losses and BN statistics).

Several processes (TPU pod workers, SLURM tasks, local processes) join one run through JAX's
distributed runtime (`initialize_distributed`); the mesh then spans every process's devices and each
process feeds only its own rows of the global batch (`shard_batch`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
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


class DistributedError(RuntimeError):
    """A multi-process launch that cannot start or whose processes disagree; one line naming the fix."""


CLUSTERS = ("auto", "none", "explicit", "slurm", "tpu")


def detect_cluster(dist_cfg: Any, env: Mapping[str, str]) -> str:
    """Which launch environment `config.distributed` and the process environment describe.

    auto: an explicit coordinator address wins, then a SLURM job step with several tasks, then a TPU VM
    (whose runtime knows its pod); otherwise one process and nothing to initialise.
    """
    if dist_cfg.cluster not in CLUSTERS:
        raise DistributedError(f"config.distributed.cluster={dist_cfg.cluster!r} is not one of {CLUSTERS}.")
    if dist_cfg.cluster != "auto":
        return dist_cfg.cluster
    if dist_cfg.coordinator_address:
        return "explicit"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):   # TPU chips (v4/v5p, v5e/v6e)
        return "tpu"
    return "none"


def _explicit_args(dist_cfg: Any) -> dict:
    address, count, index = dist_cfg.coordinator_address, dist_cfg.num_processes, dist_cfg.process_id
    if not address or ":" not in address:
        raise DistributedError(
            f"config.distributed.coordinator_address={address!r} must be host:port of process 0.")
    if count < 1:
        raise DistributedError(f"config.distributed.num_processes={count} must be the number of processes (>= 1).")
    if not 0 <= index < count:
        raise DistributedError(
            f"config.distributed.process_id={index} must be in [0, {count}) for num_processes={count}.")
    return {"coordinator_address": address, "num_processes": count, "process_id": index}


def _slurm_args(dist_cfg: Any, env: Mapping[str, str]) -> dict:
    tasks = int(env["SLURM_NTASKS"])
    if dist_cfg.num_processes > 0 and dist_cfg.num_processes != tasks:
        raise DistributedError(
            f"config.distributed.num_processes={dist_cfg.num_processes} disagrees with SLURM_NTASKS={tasks}; "
            f"leave it at 0 under SLURM.")
    # JAX reads the coordinator (first node), process id and one local GPU per task from SLURM_*.
    return {"cluster_detection_method": "slurm", "num_processes": tasks}


def distributed_args(dist_cfg: Any, env: Mapping[str, str]) -> dict | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for a single-process run."""
    cluster = detect_cluster(dist_cfg, env)
    if cluster == "none":
        return None
    timeouts = {"initialization_timeout": dist_cfg.initialization_timeout,
                "heartbeat_timeout_seconds": dist_cfg.heartbeat_timeout,
                "shutdown_timeout_seconds": dist_cfg.shutdown_timeout}
    if cluster == "explicit":
        return {**_explicit_args(dist_cfg), **timeouts}
    if cluster == "slurm":
        return {**_slurm_args(dist_cfg, env), **timeouts}
    return timeouts   # tpu: the TPU runtime's metadata names the workers and the coordinator


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Polls process 0's port, so an unreachable coordinator is a clear error, not a native abort."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"could not reach the coordinator {address} (config.distributed.coordinator_address) within "
                    f"{timeout_s:.0f} s ({error.strerror or error}); start process 0 there or fix the address.")
            time.sleep(0.5)


def initialize_distributed(dist_cfg: Any, env: Mapping[str, str] | None = None) -> None:
    """Joins JAX's distributed runtime when launched as one of several processes; a no-op otherwise.

    Must run before anything touches devices. After it, `jax.devices()` lists every process's devices,
    and `jax.process_index()` / `jax.process_count()` pick each process's data shard.
    """
    env = os.environ if env is None else env
    args = distributed_args(dist_cfg, env)
    if args is None:
        return
    if args.get("process_id", 0) > 0:
        wait_for_coordinator(args["coordinator_address"], dist_cfg.initialization_timeout)
    jax.distributed.initialize(**args)
    expected = args.get("num_processes")
    if expected is not None and jax.process_count() != expected:
        raise DistributedError(
            f"this process was told num_processes={expected} but process 0 started the run with "
            f"{jax.process_count()} processes; give every process the same config.distributed.num_processes.")


def check_same_on_all_processes(text: str, what: str) -> None:
    """Raises on every process when processes hold different `text` (configs, resume steps)."""
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], np.uint32)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    differing = [i for i, d in enumerate(digests) if not np.array_equal(d, digests[0])]
    if differing:
        raise DistributedError(
            f"{what} differs between processes (process {differing[0]} vs process 0); launch every process with "
            f"the same recipe, overrides and workdir.")


def check_micro_batch(micro_batch: int, per_device_batch: int, key: str = "config.micro_batch_size") -> None:
    if micro_batch < 0 or (micro_batch and per_device_batch % micro_batch):
        raise ValueError(
            f"{key}={micro_batch} must be 0 (off) or divide the per-device batch of {per_device_batch} "
            f"(global batch / device count).")


def check_same_config(config: Any) -> None:
    """Every process must train the same recipe; only its own process_id may differ."""
    settings = config.to_dict()
    settings.get("distributed", {}).pop("process_id", None)
    check_same_on_all_processes(json.dumps(settings, sort_keys=True, default=str), "the config")


def exit_now(code: int) -> None:
    """Exits; a process of a multi-process run skips JAX's exit barrier, so instead of waiting there for
    processes that are still training, its peers see it stop and end within heartbeat_timeout."""
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
