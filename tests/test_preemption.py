"""Fault injection with real processes on digits: SIGKILL and SIGTERM mid-run, damaged checkpoints, a second run
on a live workdir, reruns of finished or changed workdirs, bad inputs. A resumed run must end bitwise equal to
the uninterrupted one (same device count), whatever happened in between."""
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from sslx import workdir as workdir_lib
from sslx.checkpoint import CheckpointError
from sslx.config import base_config
from sslx.stages import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 4
PROCESS_TIMEOUT_S = 300


def digits_config(method="simclr", total_steps=STEPS):
    c = base_config()
    c.method = method
    c.data.name, c.data.image_size, c.data.shuffle_buffer = "digits", 8, 256
    c.model.width = 0.125
    c.head.hidden_dim, c.head.out_dim = 32, 16
    if method in ("byol", "mocov3", "simsiam"):
        c.predictor.num_layers = 2
    if method == "mocov2":
        c.moco.queue_size = 64
    c.batch_size, c.total_steps = 32, total_steps
    c.optim.warmup_steps = 2
    c.log_every_steps, c.checkpoint_every_steps = 1, EVERY
    c.eval.linear_probe = False
    return c


RECIPE = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from test_preemption import digits_config
    def get_config():
        return digits_config(total_steps={steps})
''')


def start_cli(workdir, tmp_path, total_steps=STEPS):
    recipe = tmp_path / f"recipe_{total_steps}.py"
    recipe.write_text(RECIPE.format(tests=str(REPO / "tests"), steps=total_steps))
    # The test session's environment: 8 CPU devices and its shared compilation cache.
    return subprocess.Popen([sys.executable, "-c", "from sslx.cli import pretrain; pretrain()", "--config",
                             str(recipe), "--workdir", str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def wait_for_step(workdir, step, process):
    """Blocks until metrics.jsonl logs `step` (the process is then training or past it)."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    path = pathlib.Path(workdir) / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if path.exists() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines()
                                 if line.endswith("}")):
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def finish(process):
    out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    return process.returncode, out, err


def saved_arrays(workdir, step=STEPS):
    tree = ocp.PyTreeCheckpointer().restore(pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state")
    import jax
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_bitwise_equal(workdir, reference, step=STEPS):
    got, want = saved_arrays(workdir, step), saved_arrays(reference, step)
    assert got.keys() == want.keys()
    differing = [k for k in want if not np.array_equal(got[k], want[k])]
    assert not differing, f"{len(differing)} of {len(want)} arrays differ, e.g. {differing[:3]}"


def metric_steps(workdir):
    return [json.loads(line)["step"] for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (in this process) that every interrupted one must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    pretrain.run_pretraining(digits_config(), str(workdir))
    return workdir


def test_sigkill_at_a_random_step_then_resume_is_bitwise_equal(reference, tmp_path):
    kill_at = random.Random().randint(2, STEPS - 1)
    workdir = tmp_path / "run"
    process = start_cli(workdir, tmp_path)
    wait_for_step(workdir, kill_at, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    code, out, err = finish(start_cli(workdir, tmp_path))
    assert code == 0, err
    assert_bitwise_equal(workdir, reference), f"killed at step {kill_at}"
    assert metric_steps(workdir) == list(range(1, STEPS + 1)), f"killed at step {kill_at}"


def test_sigterm_saves_the_current_step_exits_0_and_the_rerun_continues(reference, tmp_path):
    workdir = tmp_path / "run"
    process = start_cli(workdir, tmp_path)
    wait_for_step(workdir, 5, process)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 0, err
    stopped = next(line for line in out.splitlines() if line.startswith("stopped by SIGTERM"))
    step = int(stopped.split("after step ")[1].split(":")[0])
    assert 5 <= step < STEPS and (workdir / "checkpoints" / str(step)).is_dir(), out
    code, out, err = finish(start_cli(workdir, tmp_path))
    assert code == 0 and f"resumed from step {step}" in out, err
    assert_bitwise_equal(workdir, reference)


def _data_files(step_dir):
    return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 0
                  and "ocdbt" not in p.name and p.parent.name == "d")


def _zero_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(min(64, len(data) - middle))
    path.write_bytes(bytes(data))


DAMAGE = {
    "data file deleted": lambda d: _data_files(d)[0].unlink(),
    "data file truncated": lambda d: _data_files(d)[0].write_bytes(_data_files(d)[0].read_bytes()[:20]),
    "zeroed bytes in a data file": lambda d: _zero_middle(_data_files(d)[0]),
    "state metadata deleted": lambda d: (d / "state" / "_METADATA").unlink(),
    "checksums deleted": lambda d: shutil.rmtree(d / "meta"),
    "empty step directory": lambda d: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in list(d.iterdir())],
}


@pytest.fixture(scope="module")
def stopped_at_8(tmp_path_factory):
    """The reference's run interrupted after step 9 (checkpoints 4 and 8), to damage copies of."""
    from test_pretrain import Interrupted, interrupt_after
    workdir = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as monkeypatch:
        interrupt_after(monkeypatch, 9)
        with pytest.raises(Interrupted):
            pretrain.run_pretraining(digits_config(), str(workdir))
    return workdir


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_skipped_and_set_aside(stopped_at_8, reference, tmp_path, damage, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(stopped_at_8, workdir)
    DAMAGE[damage](workdir / "checkpoints" / "8")
    pretrain.run_pretraining(digits_config(), str(workdir))
    out = capsys.readouterr().out
    assert "checkpoint step 8" in out and "resumed from step 4" in out, out
    assert len(list((workdir / "corrupt_checkpoints").iterdir())) == 1
    assert_bitwise_equal(workdir, reference)


def test_no_readable_checkpoint_is_one_error_and_moves_nothing(stopped_at_8, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(stopped_at_8, workdir)
    for step in (4, 8):
        DAMAGE["data file deleted"](workdir / "checkpoints" / str(step))
    with pytest.raises(CheckpointError, match="no readable checkpoint .*step 8: .*step 4: "):
        pretrain.run_pretraining(digits_config(), str(workdir))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "8"]


def test_a_second_run_on_a_live_workdir_stops_naming_the_first(tmp_path):
    workdir = tmp_path / "run"
    first = start_cli(workdir, tmp_path, total_steps=10_000)
    try:
        wait_for_step(workdir, 1, first)
        with pytest.raises(workdir_lib.WorkdirError, match=f"in use by process {first.pid} on "):
            pretrain.run_pretraining(digits_config(total_steps=10_000), str(workdir))
    finally:
        first.kill()
        first.wait(timeout=60)
    workdir_lib.Lock(workdir).release()  # a killed run leaves the lock free


def test_rerun_of_a_finished_workdir_reports_it_and_a_changed_config_stops_first(reference, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file() and p.name != ".lock"}
    results = pretrain.run_pretraining(digits_config(), str(reference))
    assert results["step"] == STEPS and "is finished" in capsys.readouterr().out
    changed = digits_config()
    changed.model.width, changed.optim.base_lr = 0.25, 2.0
    with pytest.raises(workdir_lib.WorkdirError, match=r"model\.width \(0\.125 -> 0\.25\); optim\.base_lr"):
        pretrain.run_pretraining(changed, str(reference))
    after = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_a_diverging_run_never_saves_a_non_finite_state(tmp_path):
    config = digits_config(total_steps=8)
    config.optim.base_lr, config.checkpoint_every_steps = 1e30, 1
    with pytest.raises(FloatingPointError, match="step \\d+.*(last good checkpoint is step|no checkpoint was saved yet)"):
        pretrain.run_pretraining(config, str(tmp_path))
    for step_dir in (tmp_path / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            floats = [a for a in saved_arrays(tmp_path, int(step_dir.name)).values()
                      if np.issubdtype(a.dtype, np.floating)]
            assert all(np.isfinite(a).all() for a in floats)
            assert np.isfinite(sum(np.sum(np.square(a, dtype=np.float32)) for a in floats))


@pytest.mark.parametrize("key,value,message", [
    ("checkpoint_every_steps", 0, "config.checkpoint_every_steps=0 must be a positive integer"),
    ("log_every_steps", 0, "config.log_every_steps=0 must be a positive integer"),
    ("data.image_size", 0, "config.data.image_size=0 must be a positive integer"),
])
def test_bad_loop_settings_fail_before_anything_is_written(tmp_path, key, value, message):
    config = digits_config()
    section, _, leaf = key.rpartition(".")
    setattr(config[section] if section else config, leaf, value)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        pretrain.run_pretraining(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_or_lies_under_a_file_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    for workdir, message in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "lies under the file")):
        with pytest.raises(workdir_lib.WorkdirError, match=message):
            pretrain.run_pretraining(digits_config(), str(workdir))
    assert (tmp_path / "file").read_text() == "x"


def write_tfrecords(directory, images, labels, corrupt=(), garbage_file=False):
    """`train-0.tfrecord` of JPEG digits (records at `corrupt` positions hold bytes that do not decode)."""
    import tensorflow as tf
    directory.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(directory / "train-0.tfrecord")) as writer:
        for i, (image, label) in enumerate(zip(images, labels)):
            encoded = b"not a jpeg" if i in corrupt else tf.io.encode_jpeg(image).numpy()
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                       "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"train/{i}".encode()])),
                       "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    if garbage_file:
        (directory / "train-1.tfrecord").write_bytes(os.urandom(1000))
    (directory / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")


def test_corrupt_records_are_skipped_and_counted_or_named(tmp_path):
    from sslx import data
    from sslx.data.sources import _digits
    images, labels = _digits("train")
    labels = np.minimum(labels[:96], 8)
    labels[17] = 9  # the corrupt record's label, seen nowhere else
    write_tfrecords(tmp_path / "jpegs", images[:96], labels, corrupt={17})
    config = digits_config(total_steps=8)
    config.data.name, config.data.path, config.checkpoint_every_steps = "tfrecord", str(tmp_path / "jpegs"), 8
    batches = data.pretrain_iterator(config.data, data.spec_from_config(config.augment), local_batch=32,
                                     image_size=8, seed=0)
    seen = np.concatenate([next(batches)["label"] for _ in range(8)])  # 256 examples: 2.7 epochs
    assert 9 not in seen and batches.skipped >= 2
    results = pretrain.run_pretraining(config, str(tmp_path / "run"))
    assert results["skipped_records"] >= 2
    config.data.skip_corrupt = False
    strict = data.pretrain_iterator(config.data, data.spec_from_config(config.augment), local_batch=32,
                                    image_size=8, seed=0)
    with pytest.raises(ValueError, match="the record train/17 \\(epoch 0, record \\d+ .*does not decode .*"
                                         "config.data.skip_corrupt=True"):
        for _ in range(8):
            next(strict)


def test_a_file_that_is_not_a_tfrecord_is_named_before_anything_is_written(tmp_path):
    from sslx.data.sources import _digits
    images, labels = _digits("train")
    write_tfrecords(tmp_path / "jpegs", images[:32], labels[:32], garbage_file=True)
    config = digits_config()
    config.data.name, config.data.path = "tfrecord", str(tmp_path / "jpegs")
    with pytest.raises(ValueError, match="train-1.tfrecord is not a readable TFRecord file"):
        pretrain.run_pretraining(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_recipe_that_fails_shows_only_its_own_frames(tmp_path):
    recipe = tmp_path / "broken.py"
    recipe.write_text("def helper():\n    return 1 / 0\n\ndef get_config():\n    return helper()\n")
    done = subprocess.run([sys.executable, "-c", "from sslx.cli import pretrain; pretrain()", "--config",
                           str(recipe), "--workdir", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT_S, env=dict(os.environ))
    assert done.returncode == 2 and "ZeroDivisionError" in done.stderr.splitlines()[0]
    assert "sslx/" not in done.stderr and "absl" not in done.stderr and 'broken.py", line 2' in done.stderr
