"""Multi-node GPU training under SLURM: writes an sbatch script and submits it.

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --partition gpu --time 12:00:00 \
        --config configs/simclr_imagenet.py --workdir /shared/runs/simclr_r50 -- --config.epochs=100

Add --dry-run to print the script and the sbatch command without writing or submitting anything.
One task per GPU: srun starts nodes x gpus-per-node processes, and JAX's SLURM detection (config
distributed.cluster='auto') takes the coordinator from the first node, the process index from
SLURM_PROCID and each process's GPU from SLURM_LOCALID. --kill-on-bad-exit ends every task when one
fails, so a dead process cannot leave the others waiting in a collective.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import common


def sbatch_script(args: argparse.Namespace) -> str:
    tasks = args.nodes * args.gpus_per_node
    train = common.stage_command(args.stage, args.config, args.workdir, args.overrides)
    directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
                  f"--ntasks-per-node={args.gpus_per_node}", f"--gpus-per-node={args.gpus_per_node}",
                  f"--cpus-per-task={args.cpus_per_task}", f"--time={args.time}",
                  f"--output={args.log_dir}/%x-%j.out"]
    if args.partition:
        directives.append(f"--partition={args.partition}")
    if args.account:
        directives.append(f"--account={args.account}")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail",
             f"# {args.nodes} nodes x {args.gpus_per_node} GPUs = {tasks} processes, one GPU each.",
             f"cd {common.shell([str(args.code_dir)])}",
             *([f"source {common.shell([args.venv])}/bin/activate"] if args.venv else []),
             f"srun --kill-on-bad-exit=1 {common.shell(train)}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-task", type=int, default=12, help="tf.data input pipeline threads")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")
    parser.add_argument("--job-name", default="sslx")
    parser.add_argument("--log-dir", default="slurm-logs")
    parser.add_argument("--code-dir", default=str(common.REPO), help="this checkout, as the nodes see it")
    parser.add_argument("--venv", default="", help="virtual environment to activate on the nodes")
    parser.add_argument("--stage", default="pretrain")
    parser.add_argument("--config", default="configs/simclr_imagenet.py")
    parser.add_argument("--workdir", required=True, help="a directory every node shares")
    parser.add_argument("--batch-size", type=int, default=0, help="the recipe's global batch, to check it divides")
    parser.add_argument("--script", default="", help="where to write the sbatch script (default: log dir)")
    parser.add_argument("--dry-run", action="store_true", help="print the script and command, run nothing")
    args, args.overrides = common.parse_with_overrides(parser, argv)
    devices = args.nodes * args.gpus_per_node
    if args.batch_size and args.batch_size % devices:
        raise SystemExit(f"--batch-size={args.batch_size} is not divisible by the {devices} GPUs; "
                         f"pick a multiple of {devices}.")
    script = sbatch_script(args)
    path = pathlib.Path(args.script or f"{args.log_dir}/{args.job_name}.sbatch")
    submit = ["sbatch", str(path)]
    if args.dry_run:
        print(f"# {path}\n{script}# submit:\n{common.shell(submit)}")
        return
    for directory in {path.parent, pathlib.Path(args.log_dir)}:   # SLURM does not create --output's directory
        directory.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    print(common.shell(submit), flush=True)
    sys.exit(subprocess.call(submit))


if __name__ == "__main__":
    main()
