"""sslx.load_encoder / sslx-embed: a workdir of every method family as an image encoder, with the run's eval
preprocessing, on arrays (uint8 or float, any size) and on image files."""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import sslx
from sslx import cli
from sslx import encoder as encoder_module
from sslx.checkpoint import Checkpointer
from sslx.data import augment
from sslx.methods import build_method
from test_methods import tiny_config

SIZE = 8   # digits


def method_config(method, **overrides):
    config = tiny_config(method, **overrides)
    config.data.name, config.data.image_size = "digits", SIZE
    return config


def random_like(tree, seed):
    """Random values of the shapes of `tree` (no init to compile): kernels scaled by fan-in, BN scales and variances
    in [0.5, 1.5], so every weight and statistic matters."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):   # counters (MoCo's queue pointer)
            return np.zeros(leaf.shape, leaf.dtype)
        if name.endswith(("['var']", "['scale']")):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if name.endswith("['kernel']") else 0.2
        return (scale * rng.normal(size=leaf.shape)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, tree)


def save_trained_looking(workdir, config, step=5):
    """A workdir whose checkpoint has random weights and BN statistics, and (BYOL/MoCo) a different EMA target.

    Only what evaluation reads is saved ({'params', 'batch_stats'}, and the target to tell it apart)."""
    method = build_method(config, 10, 10)
    shapes = jax.eval_shape(method.init, jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3)))
    names = ("params", "batch_stats", "extra")
    state = types.SimpleNamespace(**{name: random_like(tree, seed)
                                     for seed, (name, tree) in enumerate(zip(names, shapes))})
    checkpointer = Checkpointer(workdir, keep=1, every_steps=1)
    checkpointer.save(step, vars(state), force=True)
    checkpointer.close()
    (workdir / "config.json").write_text(config.to_json_best_effort())
    return method, state


def photos(n=5, seed=0):
    """uint8 images larger than the model's input and not square, so the crop and resize are exercised."""
    return np.random.default_rng(seed).integers(0, 256, (n, 13, 11, 3), dtype=np.uint8)


@pytest.mark.parametrize("method, head_layer", [
    ("simclr", 0), ("simclr", 1), ("byol", 0), ("mocov2", 0), ("mocov3", 1), ("simsiam", 0), ("barlow_twins", 0),
    ("vicreg", 1), ("supcon", 0)])
def test_embed_matches_the_online_network_on_eval_preprocessed_images(method, head_layer, tmp_path):
    config = method_config(method)
    method_obj, state = save_trained_looking(tmp_path, config)
    encoder = sslx.load_encoder(tmp_path, head_layer=head_layer)
    images = photos()
    # The reference: SimCLR keeps <= 64 px data whole, then the online network (not the EMA target) in eval mode.
    inputs = augment.eval_preprocess(images, SIZE, 1.0).numpy()
    network = method_obj.network(None)
    pick = lambda out: out["features"] if head_layer == 0 else out["hiddens"][head_layer]  # noqa: E731
    expected = pick(network.apply({"params": state.params, "batch_stats": state.batch_stats}, inputs, train=False))
    features = encoder.embed(images)   # 5 rows over 8 devices: padded, then cut
    assert encoder.crop_fraction == 1.0 and features.shape == (5, encoder.dim) == expected.shape
    np.testing.assert_allclose(features, expected, atol=1e-5, rtol=1e-5)
    assert np.abs(features - np.asarray(expected)).max() < 1e-4 * np.abs(expected).max()
    if "target_params" in state.extra:
        target = {"params": {**state.params, **state.extra["target_params"]},
                  "batch_stats": {**state.batch_stats, **state.extra["target_batch_stats"]}}
        from_target = pick(network.apply(target, inputs, train=False))
        assert not np.allclose(features, from_target, atol=1e-3)


def test_uint8_float_lists_and_files_give_the_same_features(tmp_path):
    save_trained_looking(tmp_path / "run", method_config("simclr"))
    encoder = sslx.load_encoder(str(tmp_path / "run"), batch_size=3)   # batches of 8 (a multiple of 8 devices)
    images = photos(11)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(image))
    expected = encoder.embed(images)
    assert expected.shape == (11, encoder.dim)
    np.testing.assert_allclose(encoder.embed(images.astype(np.float32) / 255.0), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(list(images)), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(paths), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(paths[3]), expected[3:4], atol=1e-5)   # one path
    np.testing.assert_allclose(encoder.embed(jnp.asarray(images)), expected, atol=1e-5)
    # Any size: a differently sized image gets the same crop-and-resize as in a batch of its own size.
    wide = np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    mixed = encoder.embed([wide, images[0]])
    np.testing.assert_allclose(mixed[0], encoder.embed(wide[None])[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], expected[0], atol=1e-5)
    assert encoder.embed(images[:0]).shape == (0, encoder.dim)


def test_bad_inputs_are_one_line_errors(tmp_path):
    save_trained_looking(tmp_path, method_config("simclr"))
    with pytest.raises(ValueError, match=r"head_layer=2 must lie in \[0, 1\]"):
        sslx.load_encoder(tmp_path, head_layer=2)
    encoder = sslx.load_encoder(tmp_path)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\].*\(4, 8, 8\)"):
        encoder.embed(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="dtype int64"):
        encoder.embed(np.zeros((4, 8, 8, 3), np.int64))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        encoder.embed([str(tmp_path / "missing.png")])


def test_sslx_embed_writes_features_and_the_file_list(tmp_path, monkeypatch, capsys):
    save_trained_looking(tmp_path / "run", method_config("simclr"))
    folder = tmp_path / "photos"
    for i, image in enumerate(photos(3)):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(folder / f"class{i % 2}" / f"{i}.png"), tf.io.encode_png(image))
    (folder / "notes.txt").write_text("not an image")

    def run(images, out):
        monkeypatch.setattr(sys, "argv", ["sslx-embed", "--workdir", str(tmp_path / "run"), "--images", images,
                                          "--out", out])
        cli.embed()

    run(str(folder), str(tmp_path / "out" / "embeddings.npy"))
    features = np.load(tmp_path / "out" / "embeddings.npy")
    listed = (tmp_path / "out" / "embeddings.txt").read_text().splitlines()
    assert [p.rsplit("/", 2)[-2:] for p in listed] == [["class0", "0.png"], ["class0", "2.png"], ["class1", "1.png"]]
    np.testing.assert_allclose(features, sslx.load_encoder(tmp_path / "run").embed(listed), atol=1e-5)
    np.testing.assert_allclose(features[:2], sslx.load_encoder(tmp_path / "run").embed(
        sorted(str(p) for p in folder.glob("class0/*.png"))), atol=1e-5)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        run(str(tmp_path / "none*.jpg"), str(tmp_path / "e.npy"))
    error = capsys.readouterr().err
    assert exit_code.value.code == 2 and error.count("\n") == 1
    assert error.startswith("sslx-embed: error: no image files")


def test_the_eval_crop_is_the_runs_even_away_from_its_data(tmp_path):
    config = method_config("simclr")
    assert encoder_module.run_crop_fraction(config) == 1.0                  # digits, 8 px: kept whole
    config.data.name, config.data.data_dir, config.data.image_size = "imagenet2012", str(tmp_path), 224
    assert encoder_module.run_crop_fraction(config) == 0.875                # not readable here: from image_size
    assert augment.eval_crop_fraction((None, None, 3)) == 0.875 and augment.eval_crop_fraction((96, 96, 3)) == 0.875
