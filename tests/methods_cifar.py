"""Shared by the short real-data method runs (test_methods_cifar_*.py, split in two so xdist runs them side by side).

Each method's own CIFAR-10 recipe (heads, loss, optimizer, augmentations, momentum schedules) is shrunk to a
ResNet-18 at width 0.125 on 16 px images and batch 64 at the recipe's own step size; the run must not collapse
and its end-of-run linear probe must beat the same encoder at a random initialisation by a point.

Slow (SSLX_SLOW=1), and failing: at this size no method beats a proper random-init encoder. Measured with the
random-init baseline's residual branches on (0.298; raw pixels 0.325): byol 0.293, mocov3 0.288, barlow_twins
0.304, vicreg 0.291, supcon 0.298 at 150 steps; mocov2 0.278, simsiam 0.271 at 300. These runs passed in CI
only while the baseline was the zero-init network (0.268), which at 16 px reads a few stem positions. Showing
learning on CIFAR-10 within CI needs longer or larger runs (issue 16's cifar10-cpu suite).
"""
import math
import pathlib

from sslx.config import load_recipe
from sslx.stages import pretrain

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
OUT_DIM = 32
STEPS = 150
# MoCo v2 (one direction, keys from a lagging encoder) and SimSiam (no negatives, stop-gradient) start slower:
# at 150 steps their probe was still at random init's level (0.262 and 0.260), at 300 steps 0.289 and 0.292.
SLOW_STARTERS = {"mocov2": 300, "simsiam": 300}
BATCH = 64
MARGIN = 0.01   # probe top-1 (as a fraction) over random init, on all 10,000 test images (std error ~0.45 points)


def tiny_recipe(method: str, cifar10_dir):
    """The recipe's method, head shape, optimiser and augmentations at a few minutes' cost."""
    c = load_recipe(CONFIGS / f"{method}_cifar10.py")
    c.data.name = "tfrecord"
    c.data.path = str(cifar10_dir)
    c.data.image_size = 16
    c.data.cache = False
    c.data.shuffle_buffer = 5000
    c.model.width = 0.125
    c.head.hidden_dim, c.head.out_dim = 128, OUT_DIM
    if c.predictor.num_layers:
        c.predictor.hidden_dim = 64
    if method == "mocov2":
        c.moco.queue_size = 8 * BATCH
    c.total_steps = steps = SLOW_STARTERS.get(method, STEPS)
    # The recipes scale the learning rate by B/256, which leaves batch 64 a fraction of the recipe's step size,
    # too little to move a random init in 150 steps: the short run keeps the step size of the recipe's batch.
    c.optim.base_lr *= c.batch_size / BATCH
    c.batch_size = BATCH
    c.optim.warmup_steps = 5
    c.log_every_steps = steps      # the results then hold the last step's metrics
    c.checkpoint_every_steps = 10 * steps
    c.eval.batch_size = 1000
    c.eval.probe_train_examples = 5000
    c.eval.probe_steps = 100
    return c


def check_learns_without_collapse(method: str, workdir, cifar10_dir) -> None:
    results = pretrain.run_pretraining(tiny_recipe(method, cifar10_dir), str(workdir))
    learned, random_init = results["linear_probe_top1"], results["random_init_linear_probe_top1"]
    print(f"{method}: probe top-1 {learned:.3f} vs random init {random_init:.3f}, z_std {results['z_std']:.3f} "
          f"(1/sqrt(d) = {1 / math.sqrt(OUT_DIM):.3f}), {results['train_seconds']} s")
    # Mean per-dimension std of the l2-normalised projections: ~1/sqrt(d) spread out, -> 0 collapsed.
    assert results["z_std"] > 0.3 / math.sqrt(OUT_DIM), results
    assert learned > random_init + MARGIN, results
