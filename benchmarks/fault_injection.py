"""Fault injection on the quickstart recipe: runs killed with SIGKILL at random steps, then rerun with the same
command; reports the steps each kill lost and whether the finished run equals an uninterrupted one, array for array.

    python benchmarks/fault_injection.py --trials 5 --workdir /tmp/sslx-faults

Every run is `sslx-pretrain --config configs/quickstart.py` with checkpoints every 10 of 40 steps and no final probe.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ("--config.total_steps=40", "--config.checkpoint_every_steps=10", "--config.log_every_steps=1",
             "--config.eval.linear_probe=False")


def start(workdir: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from sslx.cli import pretrain; pretrain()", "--config",
                             str(REPO / "configs" / "quickstart.py"), "--workdir", str(workdir), *OVERRIDES],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def committed_steps(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def final_arrays(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp
    tree = ocp.PyTreeCheckpointer().restore(workdir.absolute() / "checkpoints" / "40" / "state")
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def run_to_end(workdir: pathlib.Path) -> None:
    out, err = start(workdir).communicate()
    if "wrote" not in out:
        raise RuntimeError(f"run in {workdir} did not finish: {err[-2000:]}")


def trial(workdir: pathlib.Path, kill_at: int, reference: dict[str, np.ndarray]) -> dict:
    process = start(workdir)
    while logged_step(workdir) < kill_at:
        if process.poll() is not None:
            raise RuntimeError(process.communicate()[1][-2000:])
        time.sleep(0.02)
    killed_after = logged_step(workdir)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = max([s for s in committed_steps(workdir) if s <= killed_after], default=0)
    run_to_end(workdir)
    arrays = final_arrays(workdir)
    equal = sum(np.array_equal(arrays[k], reference[k]) for k in reference)
    return {"killed_after_step": killed_after, "resumed_from": resumed_from, "steps_lost": killed_after - resumed_from,
            "arrays_equal": int(equal), "arrays": len(reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="seeds the random kill steps")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.workdir.mkdir(parents=True, exist_ok=True)
    run_to_end(args.workdir / "reference")
    reference = final_arrays(args.workdir / "reference")
    rng = random.Random(args.seed)
    rows = [trial(args.workdir / f"trial{i}", rng.randint(2, 39), reference) for i in range(args.trials)]
    for row in rows:
        print(json.dumps(row))
    lost = [row["steps_lost"] for row in rows]
    print(f"{len(rows)} kills: {sum(r['arrays_equal'] == r['arrays'] for r in rows)} finished bitwise equal to the "
          f"uninterrupted run; steps lost mean {np.mean(lost):.1f}, max {max(lost)} (checkpoints every 10)")


if __name__ == "__main__":
    main()
