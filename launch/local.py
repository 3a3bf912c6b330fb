"""Several training processes on this machine through JAX's distributed runtime (explicit coordinator).

    python launch/local.py --num-processes 2 --devices-per-process 4 \
        --config configs/quickstart.py --workdir /tmp/sslx-2proc -- --config.total_steps=50

On CPU each process gets --devices-per-process simulated devices; with --platform gpu each process
gets its own --devices-per-process GPUs (CUDA_VISIBLE_DEVICES). Output lines carry their process index.
When one process fails the others are stopped. Add --dry-run to print the exact commands.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading

import common


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(args: argparse.Namespace, index: int, port: int) -> dict[str, str]:
    """The environment variables one process adds to this one's."""
    env = {"JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"}   # the coordinator listens on loopback only
    if args.platform == "cpu":
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices_per_process}")
    else:
        first = index * args.devices_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(args.devices_per_process))
    return env


def process_commands(args: argparse.Namespace, port: int) -> list[tuple[dict[str, str], list[str]]]:
    commands = []
    for index in range(args.num_processes):
        distributed = [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                       f"--config.distributed.num_processes={args.num_processes}",
                       f"--config.distributed.process_id={index}"]
        argv = common.stage_command(args.stage, args.config, args.workdir, [*distributed, *args.overrides])
        commands.append((process_env(args, index, port), argv))
    return commands


def relay(index: int, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[process {index}] {line}")
        sys.stdout.flush()


def launch(commands: list[tuple[dict[str, str], list[str]]]) -> int:
    """Runs every process; the first failure stops the rest. Returns the first nonzero exit code."""
    procs = [subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for env, argv in commands]
    relays = [threading.Thread(target=relay, args=(i, p.stdout), daemon=True) for i, p in enumerate(procs)]
    for thread in relays:
        thread.start()
    running, code = set(procs), 0
    while running:
        for proc in list(running):
            if proc.poll() is None:
                continue
            running.discard(proc)
            if proc.returncode and not code:
                code = proc.returncode
                for other in running:
                    other.terminate()
        threading.Event().wait(0.2)
    for thread in relays:
        thread.join()
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=1)
    parser.add_argument("--platform", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--stage", default="pretrain")
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args, args.overrides = common.parse_with_overrides(parser, argv)
    commands = process_commands(args, args.port or free_port())
    for env, command in commands:
        print(common.shell([f"{k}={v}" for k, v in env.items()] + command), flush=True)
    if not args.dry_run:
        sys.exit(launch(commands))


if __name__ == "__main__":
    main()
