"""Fast vs protocol linear evaluation of one checkpoint: wall time from checkpoint to top-1, and the gap.

    python -m sslx.linear_eval_bench --pretrained PRETRAIN_WORKDIR [--epochs 90] [--batch 512] [--lr 0.1]
        [--crop-area-min 0.08]

Both modes run `sslx.stages.linear_eval` with the same optimizer, batch, learning rate and epochs; the fast
mode trains on cached centre-crop features, the protocol mode on random crop + flip views through the frozen
encoder. Prints one JSON line: seconds and top-1 of each, the speed-up and the top-1 difference in points.
"""
from __future__ import annotations

import argparse
import json
import tempfile


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sslx.linear_eval_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", required=True, help="pretraining workdir")
    parser.add_argument("--step", type=int, default=-1)
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--crop-area-min", type=float, default=0.08, help="protocol mode's smallest crop area")
    parser.add_argument("--eval-batch", type=int, default=1000)
    args = parser.parse_args(argv)

    from sslx.config import eval_config
    from sslx.stages.linear_eval import run_linear_eval
    config = eval_config()
    config.pretrained, config.step, config.eval_batch_size = args.pretrained, args.step, args.eval_batch
    config.linear.epochs, config.linear.batch_size, config.linear.learning_rates = args.epochs, args.batch, (args.lr,)
    config.linear.crop_area_min = args.crop_area_min
    results = {}
    for mode in ("fast", "protocol"):
        config.linear.mode = mode
        with tempfile.TemporaryDirectory() as workdir:
            results[mode] = run_linear_eval(config, workdir)
    summary = {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "crop_area_min": args.crop_area_min,
               **{f"{mode}_{key}": results[mode][key] for mode in results for key in ("seconds", "top1")},
               "speedup": round(results["protocol"]["seconds"] / max(results["fast"]["seconds"], 1e-9), 1),
               "top1_gap_points": round(100 * (results["fast"]["top1"] - results["protocol"]["top1"]), 2)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
