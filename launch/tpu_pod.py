"""Cloud TPU VM slices (v4, v5e, v5p, v6e): create, install, run on every worker, stream logs, delete.

    python launch/tpu_pod.py create  --name simclr --zone us-central2-b --accelerator-type v4-32
    python launch/tpu_pod.py install --name simclr --zone us-central2-b --accelerator-type v4-32   # Python 3.12 + sslx
    python launch/tpu_pod.py run     --name simclr --zone us-central2-b --accelerator-type v4-32 \
        --config configs/simclr_imagenet.py --workdir /mnt/shared/simclr_r50 -- --config.epochs=100
    python launch/tpu_pod.py logs    --name simclr --zone us-central2-b --accelerator-type v4-32
    python launch/tpu_pod.py delete  --name simclr --zone us-central2-b --accelerator-type v4-32

Add --dry-run to print the exact gcloud commands without running them. Every worker runs the same
command; JAX's TPU runtime tells each process its index and the coordinator, and each process reads
its own shard of the data. The run is detached (nohup) so a dropped SSH session does not stop it.
"""
from __future__ import annotations

import argparse
import dataclasses
import re

import common

# Software images: https://cloud.google.com/tpu/docs/runtimes
RUNTIME_VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                    "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
# The number in v2/v3/v4/v5p-N counts TensorCores, 2 per chip; in v5litepod/v6e-N it counts chips.
CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5litepod": 1, "v5p": 2, "v6e": 1}
# v2/v3 show JAX one device per TensorCore; v4/v5p fuse a chip's two cores into one device (megacore).
DEVICES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 1, "v5litepod": 1, "v5p": 1, "v6e": 1}
CHIPS_PER_HOST = 4
SINGLE_HOST_MAX_CHIPS = {"v5litepod": 8, "v6e": 8}   # v5e/v6e single-host VMs hold up to 8 chips
REMOTE_DIR = "~/sslx"
ARCHIVE = "sslx.tar.gz"
LOG = "~/sslx-run.log"
PYTHON_VERSION = "3.12"     # for the workers' virtual environment; must satisfy setup.py's python_requires
VENV = "~/sslx-venv"
UV = "~/.local/bin/uv"      # pip's --user scripts folder, which non-interactive SSH sessions leave off PATH


@dataclasses.dataclass(frozen=True)
class Slice:
    accelerator_type: str
    generation: str
    chips: int
    hosts: int
    devices: int   # JAX devices in the whole slice


def parse_slice(accelerator_type: str) -> Slice:
    match = re.fullmatch(r"(v2|v3|v4|v5litepod|v5p|v6e)-(\d+)", accelerator_type)
    if not match:
        raise SystemExit(f"--accelerator-type={accelerator_type!r}: expected e.g. v4-32, v5p-128, v5litepod-16, "
                         f"v6e-64 (generation-size).")
    generation, size = match.group(1), int(match.group(2))
    chips = size // CORES_PER_CHIP[generation]
    if chips < 1 or size % CORES_PER_CHIP[generation]:
        raise SystemExit(f"--accelerator-type={accelerator_type!r}: {generation} sizes count "
                         f"{CORES_PER_CHIP[generation]} cores per chip.")
    single_host = chips <= SINGLE_HOST_MAX_CHIPS.get(generation, CHIPS_PER_HOST)
    hosts = 1 if single_host else chips // CHIPS_PER_HOST
    return Slice(accelerator_type, generation, chips, hosts, chips * DEVICES_PER_CHIP[generation])


def gcloud(action: str, args: argparse.Namespace, *extra: str) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "tpu-vm", action, *extra, f"--zone={args.zone}"]
    return argv + ([f"--project={args.project}"] if args.project else [])


def ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
    return gcloud("ssh", args, args.name, f"--worker={worker}", f"--command={command}")


def create(args, tpu: Slice) -> list[list[str]]:
    version = args.version or RUNTIME_VERSIONS[tpu.generation]
    flags = [f"--accelerator-type={tpu.accelerator_type}", f"--version={version}"]
    return [gcloud("create", args, args.name, *flags, *(["--spot"] if args.spot else []))]


def install(args, tpu: Slice) -> list[list[str]]:
    """Packs this checkout (without .git and virtual environments), copies it to every worker, installs it.

    The TPU images ship Python 3.10, older than jax >= 0.7 supports (setup.py's python_requires), so each worker
    gets uv (a pip package) and uv builds a virtual environment on its own managed CPython PYTHON_VERSION.
    """
    pack = ["tar", "-C", str(common.REPO), "--exclude=.git", "--exclude=.venv", "--exclude=__pycache__",
            "-czf", f"/tmp/{ARCHIVE}", "."]
    copy = gcloud("scp", args, f"/tmp/{ARCHIVE}", f"{args.name}:~/", "--worker=all")
    setup = (f"mkdir -p {REMOTE_DIR} && tar -xzf ~/{ARCHIVE} -C {REMOTE_DIR} && "
             f"python3 -m pip install -q --user -U uv && "
             f"{UV} venv --allow-existing --python {PYTHON_VERSION} {VENV} && "
             f"{UV} pip install -q --python {VENV}/bin/python -e {REMOTE_DIR}'[tpu]'")   # ~ expands, [tpu] never globs
    return [pack, copy, ssh(args, setup)]


def run(args, tpu: Slice) -> list[list[str]]:
    train = common.stage_command(args.stage, args.config, args.workdir,
                                 ["--config.distributed.cluster=tpu", *args.overrides])
    # The stage's console script comes from the virtual environment that `install` built.
    detached = f"cd {REMOTE_DIR} && PATH={VENV}/bin:$PATH nohup {common.shell(train)} > {LOG} 2>&1 &"
    return [ssh(args, detached)]


def logs(args, tpu: Slice) -> list[list[str]]:
    """Worker 0 is the process that logs (and writes metrics); --log-worker picks another."""
    return [ssh(args, f"tail -n +1 -F {LOG}", worker=str(args.log_worker))]


def delete(args, tpu: Slice) -> list[list[str]]:
    return [gcloud("delete", args, args.name, "--quiet")]


ACTIONS = {"create": create, "install": install, "run": run, "logs": logs, "delete": delete}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=[*ACTIONS, "up"],
                        help="up = create, install, run, then stream the logs")
    parser.add_argument("--name", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--accelerator-type", required=True, help="v4-32, v5litepod-16, v5p-128, v6e-64, ...")
    parser.add_argument("--project", default="")
    parser.add_argument("--version", default="", help="TPU software version (default: by generation)")
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--stage", default="pretrain", help="sslx-<stage> to run")
    parser.add_argument("--config", default="configs/simclr_imagenet.py")
    parser.add_argument("--workdir", default="", help="a directory every worker shares (required for run)")
    parser.add_argument("--batch-size", type=int, default=0, help="the recipe's global batch, to check it divides")
    parser.add_argument("--log-worker", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args, args.overrides = common.parse_with_overrides(parser, argv)
    tpu = parse_slice(args.accelerator_type)
    print(f"# {tpu.accelerator_type}: {tpu.chips} chips, {tpu.hosts} workers, {tpu.devices} JAX devices")
    actions = ["create", "install", "run", "logs"] if args.action == "up" else [args.action]
    if "run" in actions:
        check_run(args, tpu)
    common.execute([c for action in actions for c in ACTIONS[action](args, tpu)], args.dry_run)


def check_run(args: argparse.Namespace, tpu: Slice) -> None:
    if not args.workdir:
        raise SystemExit("--workdir is required for run: a directory every worker shares (checkpoints).")
    if args.batch_size and args.batch_size % tpu.devices:
        raise SystemExit(f"--batch-size={args.batch_size} is not divisible by the {tpu.devices} JAX devices of "
                         f"{tpu.accelerator_type}; pick a multiple of {tpu.devices}.")


if __name__ == "__main__":
    main()
