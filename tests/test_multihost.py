"""Several processes through JAX's distributed runtime, on localhost CPU devices (gloo collectives).

2 processes x 2 devices train the same SimCLR steps as 1 process x 4 devices, with a checkpoint saved
and restored by both processes halfway; a process that dies stops its peer within the heartbeat
timeout; bad launches end with one-line errors. The workers are this file run as a script, in fresh
interpreters without conftest's 8-device XLA_FLAGS.
"""
import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

GLOBAL_BATCH = 8
STEPS = 3
SAVE_AT = 2
HEARTBEAT_S = 5
WORKER_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_config(port, process_id, num_processes, heartbeat_s=HEARTBEAT_S):
    from sslx.config import distributed_config as base
    c = base()
    c.coordinator_address = f"127.0.0.1:{port}"
    c.num_processes, c.process_id = num_processes, process_id
    # A process that saved a checkpoint on SIGTERM can reach the shutdown barrier well after its peer on a loaded
    # 2-core machine (a 10 s barrier once timed out there); a barrier both reach returns at once.
    c.initialization_timeout, c.heartbeat_timeout, c.shutdown_timeout = 30, heartbeat_s, 60
    return c


def train(devices, workdir):
    """STEPS SGD steps on fixed batches, each process feeding its rows of each batch; saved at SAVE_AT
    by every process and resumed from the restored state. Returns (losses, params on the host)."""
    import jax

    from sslx import parallel
    from sslx.checkpoint import Checkpointer
    from test_gradcache import TinySimCLR, make_batch, stepper

    run, init = stepper(TinySimCLR, 0, devices=len(devices), learning_rate=0.5)
    mesh = parallel.make_mesh(devices)
    local = GLOBAL_BATCH // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    state, losses = init, []
    for step in range(1, STEPS + 1):
        state, metrics = run(state, jax.tree.map(lambda v: v[rows], make_batch(GLOBAL_BATCH, seed=step)))
        losses.append(float(metrics["loss"]))
        if step == SAVE_AT:
            checkpointer = Checkpointer(workdir, keep=1, every_steps=1)
            checkpointer.save(step, state, force=True)
            checkpointer.close()
            state = Checkpointer(workdir, keep=1, every_steps=1).restore(parallel.replicate(init, mesh))
    return np.asarray(losses), jax.tree.map(np.asarray, jax.device_get(state.params))


def worker(args):
    """Entry point of one worker process; see `spawn`."""
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from sslx import config as config_lib
    from sslx import parallel

    dist = distributed_config(args.port, args.process_id, args.num_processes)
    try:
        parallel.initialize_distributed(dist)
        config = config_lib.base_config()
        config.distributed = dist
        config.loss.temperature = args.temperature
        parallel.check_same_config(config)
    except parallel.DistributedError as error:
        print(f"worker: error: {error}", file=sys.stderr, flush=True)
        parallel.exit_now(2)
    if args.mode == "pretrain":  # the pretraining stage until SIGTERM
        from test_preemption import digits_config
        from sslx.stages import pretrain
        from sslx.workdir import Preempted
        config = digits_config(total_steps=10_000)
        config.distributed = dist
        try:
            pretrain.run_pretraining(config, args.workdir)
        except Preempted as stopped:
            print(f"worker: {stopped}", file=sys.stderr, flush=True)
    elif args.mode == "train":
        losses, params = train(jax.devices(), args.workdir)
        if jax.process_index() == 0:
            np.savez(pathlib.Path(args.workdir) / "result.npz", losses=losses,
                     **{jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)})
    else:  # "allreduce": collectives until the other process dies
        total = jax.jit(lambda x: x.sum())
        x = parallel.shard_batch(np.ones((2, 1), np.float32), parallel.make_mesh())
        for step in range(1000):
            total(x).block_until_ready()
            if step == 2 and args.process_id == args.die:
                os._exit(3)
            time.sleep(0.05)
    print("worker: done", flush=True)


def spawn(mode, port, process_id, num_processes, workdir, *, die=-1, temperature=0.5):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
               PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent), env.get("PYTHONPATH", "")]))
    command = [sys.executable, __file__, mode, f"--port={port}", f"--process-id={process_id}",
               f"--num-processes={num_processes}", f"--workdir={workdir}", f"--die={die}",
               f"--temperature={temperature}"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs, timeout_s):
    """(returncode, stderr) of each process; kills and fails on a hang."""
    deadline = time.monotonic() + timeout_s
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"worker still running after {timeout_s} s: the run hangs")
        results.append((proc.returncode, err))
    return results


def test_two_processes_train_like_one(tmp_path):
    import jax
    port = free_port()
    procs = [spawn("train", port, i, 2, tmp_path / "two") for i in range(2)]
    results = finish(procs, WORKER_TIMEOUT_S)
    for code, err in results:
        assert code == 0, err[-3000:]
    losses, params = train(jax.devices()[:4], tmp_path / "one")
    two = np.load(tmp_path / "two" / "result.npz")
    np.testing.assert_allclose(two["losses"], losses, rtol=1e-5)
    assert losses[-1] != losses[0]
    for path, value in jax.tree_util.tree_leaves_with_path(params):
        np.testing.assert_allclose(two[jax.tree_util.keystr(path)], value, rtol=1e-4, atol=1e-6)


def test_sigterm_to_one_process_stops_all_at_the_same_step_with_a_checkpoint(tmp_path):
    port = free_port()
    procs = [spawn("pretrain", port, i, 2, tmp_path) for i in range(2)]
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), finish(procs, 10)
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # the scheduler's notice reaches one process first
    results = finish(procs, WORKER_TIMEOUT_S)
    steps = set()
    for code, err in results:
        assert code == 0, err[-3000:]
        steps.add(err.split("after step ")[1].split(":")[0])
    (step,) = steps
    assert (tmp_path / "checkpoints" / step).is_dir()


@pytest.mark.parametrize("dying", [1, 0])
def test_a_dead_process_stops_the_others(tmp_path, dying):
    port = free_port()
    procs = [spawn("allreduce", port, i, 2, tmp_path, die=dying) for i in range(2)]
    start = time.monotonic()
    results = finish(procs, 90)
    code, err = results[1 - dying]
    assert code != 0 and time.monotonic() - start < 90
    assert "another task died" in err or "heartbeat" in err, err[-2000:]


def test_inconsistent_process_counts(tmp_path):
    port = free_port()
    procs = [spawn("allreduce", port, 0, 2, tmp_path), spawn("allreduce", port, 1, 3, tmp_path)]
    (code0, _), (code1, err1) = finish(procs, 90)
    assert code1 == 2 and "told num_processes=3 but process 0 started the run with 2" in err1, err1[-2000:]
    assert code0 != 0


def test_processes_with_different_configs(tmp_path):
    port = free_port()
    procs = [spawn("allreduce", port, i, 2, tmp_path, temperature=0.1 * (i + 1)) for i in range(2)]
    for code, err in finish(procs, 90):
        assert code == 2 and "the config differs between processes" in err, err[-2000:]


def test_unreachable_coordinator_fails_fast():
    from sslx import parallel
    dist = distributed_config(free_port(), process_id=1, num_processes=2)
    dist.initialization_timeout = 2
    start = time.monotonic()
    with pytest.raises(parallel.DistributedError, match="could not reach the coordinator 127.0.0.1"):
        parallel.initialize_distributed(dist)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("field,value,message", [
    ("process_id", 2, r"process_id=2 must be in \[0, 2\)"),
    ("num_processes", 0, "num_processes=0 must be"),
    ("coordinator_address", "localhost", "must be host:port"),
])
def test_bad_explicit_launch(field, value, message):
    from sslx import parallel
    dist = distributed_config(1234, process_id=0, num_processes=2)
    setattr(dist, field, value)
    with pytest.raises(parallel.DistributedError, match=message):
        parallel.distributed_args(dist, {})


def test_launch_environment_detection():
    from sslx import parallel
    from sslx.config import distributed_config as base
    assert parallel.distributed_args(base(), {}) is None
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "77"}
    assert parallel.distributed_args(base(), slurm)["cluster_detection_method"] == "slurm"
    wrong = base()
    wrong.num_processes = 4
    with pytest.raises(parallel.DistributedError, match="num_processes=4 disagrees with SLURM_NTASKS=8"):
        parallel.distributed_args(wrong, slurm)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "allreduce", "pretrain"])
    for flag in ("--port", "--process-id", "--num-processes", "--die"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--workdir")
    parser.add_argument("--temperature", type=float)
    worker(parser.parse_args())
