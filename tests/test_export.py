"""sslx-export: weights.npz loads into a freshly built Flax module and the SavedModel loads into TensorFlow, and
both compute what `load_encoder(...).embed` computes."""
import json
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import sslx
from sslx import cli
from sslx.data import augment
from sslx.evaluators.encoders import EncoderWithHead
from sslx.export import load_weights
from sslx.models import build_encoder, build_head
from test_encoder import method_config, photos, save_trained_looking


def export(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["sslx-export", *args])
    cli.export()


def rebuilt_config(description):
    """The pretraining config from model.json alone, as a user of the export would rebuild it."""
    return ml_collections.ConfigDict(description["config"])


def test_npz_and_saved_model_match_embed(tmp_path, monkeypatch):
    save_trained_looking(tmp_path / "run", method_config("byol"))
    export(monkeypatch, "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "export"))
    encoder = sslx.load_encoder(tmp_path / "run")
    images = photos(5)
    expected = encoder.embed(images)

    description = json.loads((tmp_path / "export" / "model.json").read_text())
    assert description["preprocessing"]["crop_fraction"] == 1.0 and description["output"]["features"]["dim"] == 32
    assert description["architecture"]["head"] is None and description["step"] == 5
    variables = load_weights(str(tmp_path / "export" / "weights.npz"))
    assert set(variables) == {"params", "batch_stats"} and "stem_conv" in variables["params"]
    fresh = build_encoder(rebuilt_config(description).model, None)
    inputs = augment.eval_preprocess(images, 8, description["preprocessing"]["crop_fraction"]).numpy()
    np.testing.assert_allclose(fresh.apply(variables, inputs, train=False), expected, atol=1e-5)

    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["features"].numpy(), expected, atol=1e-5)
    other = np.random.default_rng(3).integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)   # any size
    np.testing.assert_allclose(loaded.signatures["serving_default"](images=tf.constant(other))["features"].numpy(),
                               encoder.embed(other), atol=1e-5)
    np.testing.assert_allclose(loaded.signatures["preprocessed"](images=tf.constant(inputs))["features"].numpy(),
                               expected, atol=1e-5)


def test_export_with_the_head_gives_head_features_and_the_projection(tmp_path, monkeypatch):
    save_trained_looking(tmp_path / "run", method_config("simclr"))
    export(monkeypatch, "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "export"), "--head-layer", "1",
           "--platforms", "cpu")
    encoder = sslx.load_encoder(tmp_path / "run", head_layer=1)
    images = photos(4)
    inputs = augment.eval_preprocess(images, 8, 1.0).numpy()
    description = json.loads((tmp_path / "export" / "model.json").read_text())
    assert description["architecture"]["head"]["num_layers"] == 2 and description["output"]["features"]["dim"] == 16
    config = rebuilt_config(description)
    z, hiddens = EncoderWithHead(build_encoder(config.model, None), build_head(config, None)).apply(
        load_weights(str(tmp_path / "export" / "weights.npz")), inputs, train=False)
    np.testing.assert_allclose(hiddens[1], encoder.embed(images), atol=1e-5)
    served = tf.saved_model.load(str(tmp_path / "export" / "saved_model")).signatures["serving_default"](
        images=tf.constant(images))
    np.testing.assert_allclose(served["features"].numpy(), hiddens[1], atol=1e-5)
    np.testing.assert_allclose(served["projection"].numpy(), z, atol=1e-5, rtol=1e-5)


def test_bad_platforms_are_a_one_line_error(tmp_path, monkeypatch, capsys):
    save_trained_looking(tmp_path / "run", method_config("simclr"))
    with pytest.raises(SystemExit):
        export(monkeypatch, "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--platforms", "gpu")
    assert capsys.readouterr().err == ("sslx-export: error: --platforms gpu: use a comma-separated subset of "
                                       "cpu,cuda,tpu\n")
