"""End-to-end pretraining: resume after an interrupt, non-finite loss, bad input (learning on CIFAR-10 is in
test_methods_cifar.py and test_eval_e2e.py)."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sslx import data, resume
from sslx.config import base_config
from sslx.evaluators.linear import linear_probe
from sslx.stages import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]


def digits_config(total_steps=4):
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 8
    c.data.shuffle_buffer = 256
    c.model.width = 0.125
    c.head.hidden_dim = 32
    c.head.out_dim = 16
    c.batch_size = 32
    c.total_steps = total_steps
    c.optim.warmup_steps = 1
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.eval.linear_probe = False
    return c


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, num_batches, stage=pretrain.Pretraining):
    """Makes the input of `stage` (a class with a `feed` method) die after `num_batches`, as a pre-empted job
    would."""
    original = stage.feed

    def dying(self, start_step, saved):
        feed = original(self, start_step, saved)
        combine, remaining = feed._combine, iter(range(num_batches))

        def combine_or_die(batches):
            if next(remaining, None) is None:
                raise Interrupted
            return combine(batches)

        feed._combine = combine_or_die
        return feed

    monkeypatch.setattr(stage, "feed", dying)


def test_interrupt_and_resume_continues_the_step_count(tmp_path, monkeypatch):
    config = digits_config(total_steps=6)
    interrupt_after(monkeypatch, 5)
    with pytest.raises(Interrupted):
        pretrain.run_pretraining(config, str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    monkeypatch.undo()
    results = pretrain.run_pretraining(config, str(tmp_path))
    assert results["step"] == 6
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]   # the resumed run starts after the step-4 checkpoint, dropping step 5's row
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["step"] == 6 and np.isfinite(saved["loss"])
    assert (tmp_path / "config.json").exists() and any((tmp_path / "tb").iterdir())


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = pretrain.Pretraining.device_views

    def poisoned(self, batch, step):
        batch = original(self, batch, step)
        return dict(batch, views=(batch["views"][0] * np.nan, *batch["views"][1:])) if step == 3 else batch

    monkeypatch.setattr(pretrain.Pretraining, "device_views", poisoned)
    with pytest.raises(resume.NonFiniteLossError, match="at step 3.*last good checkpoint is step 2"):
        pretrain.run_pretraining(digits_config(total_steps=6), str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", 36, "config.batch_size=36 is not divisible by the 8 devices"),
    ("model.name", "resnet7", "config.model.name"),
    ("data.name", "imagenet_typo", "config.data.name"),
    ("model.bn", "sync", "config.model.bn"),
])
def test_bad_config_fails_before_compiling(tmp_path, key, value, message):
    config = digits_config()
    section, _, leaf = key.rpartition(".")
    setattr(config[section] if section else config, leaf, value)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        pretrain.Pretraining(config, str(tmp_path))


def test_cli_reports_one_line_errors(tmp_path):
    command = [sys.executable, "-c", "from sslx.cli import pretrain; pretrain()",
               "--config", str(REPO / "configs" / "quickstart.py"), "--workdir", str(tmp_path)]
    cases = {"--config.batch_size=100": "config.batch_size",
             "--config.optimizer.name=lars": "unknown config key 'optimizer'"}
    for flag, expected in cases.items():
        done = subprocess.run(command + [flag], capture_output=True, text=True, timeout=300,
                              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                                   "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], done.stderr


def test_probe_baselines_on_the_same_split_and_probe(tmp_path):
    """The raw pixels and a random-init encoder are probed as the learned encoder is; random conv features with
    residual branches on stay near the pixels (the zero-init network's, reading one corner pixel, scored 0.17)."""
    config = digits_config()
    config.eval.linear_probe, config.eval.probe_steps = True, 100
    run = pretrain.Pretraining(config, str(tmp_path))
    results = pretrain.evaluate(run, run.initial_state())
    images = {split: next(data.eval_iterator(config.data, split, local_batch=2048, image_size=8))
              for split in (config.data.train_split, config.data.eval_split)}
    (train_x, train_y), (test_x, test_y) = ((b["image"][b["mask"] > 0].reshape(-1, 192), b["label"][b["mask"] > 0])
                                            for b in images.values())
    pixels = linear_probe(train_x, train_y, test_x, test_y, 10, l2=config.eval.probe_l2, steps=100)
    assert results["pixels_linear_probe_top1"] == pytest.approx(pixels["top1"], abs=1e-6)
    assert results["random_init_linear_probe_top1"] > pixels["top1"] - 0.1
    assert {"linear_probe_top1", "linear_probe_top5", "pixels_linear_probe_top5",
            "random_init_linear_probe_top5"} <= set(results)
