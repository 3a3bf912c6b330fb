"""Multi-crop views (config.augment.crops): the config's views, the host pipeline's and the on-device shapes, and the
encoder running once per resolution group."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from sslx import models, parallel
from sslx.config import base_config, view_sizes
from sslx.data import augment, device_augment, pipeline
from sslx.methods import build_method
from sslx.methods.base import SSLNetwork, global_views, resolution_groups

# Two global crops of 16 px (the second blurred less and solarized), three local ones of 8 px.
CROPS = (ml_collections.ConfigDict({"count": 1, "size": 16, "crop_area_min": 0.4, "blur_prob": 1.0}),
         ml_collections.ConfigDict({"count": 1, "size": 16, "crop_area_min": 0.4, "blur_prob": 0.1,
                                    "solarize_prob": 0.2}),
         ml_collections.ConfigDict({"count": 3, "size": 8, "crop_area_min": 0.05, "crop_area_max": 0.4}))
SIZES = (16, 16, 8, 8, 8)


def augment_config(**fields):
    cfg = base_config().augment
    cfg.preset, cfg.crops = "imagenet", CROPS
    cfg.update(fields)
    return cfg


def test_crops_give_one_spec_and_size_per_view_in_order():
    cfg = augment_config(jitter_strength=0.5)
    specs, sizes = augment.spec_from_config(cfg), view_sizes(cfg, 32)
    assert sizes == SIZES and len(specs) == 5
    assert [s.blur_prob for s in specs] == [1.0, 0.1, 0.5, 0.5, 0.5]
    assert [s.solarize_prob for s in specs] == [0.0, 0.2, 0.0, 0.0, 0.0]
    assert [s.crop_area_max for s in specs] == [1.0, 1.0, 0.4, 0.4, 0.4]
    assert {s.jitter_strength for s in specs} == {0.5}        # shared settings reach every crop
    # Without crops: the two default views at the data's size, as before.
    assert view_sizes(base_config().augment, 32) == (32, 32)
    assert len(augment.spec_from_config(base_config().augment)) == 2


@pytest.mark.parametrize("fields,message", [
    ({"view1": {"blur_prob": 1.0}}, r"config\.augment\.view1/view2 .* crops' entries"),
    ({"crops": ({"count": 0, "size": 8},)}, r"config\.augment\.crops\[0\]\.count=0 must be a positive integer"),
    ({"crops": ({"count": 2},)}, r"config\.augment\.crops\[0\]\.size=None"),
    ({"crops": ({"count": 2, "size": 8, "blurr_prob": 0.5},)}, r"config\.augment\.crops\[0\]\.blurr_prob is not"),
])
def test_bad_crops_name_the_key(fields, message):
    cfg = augment_config()
    cfg.update(fields)
    with pytest.raises(ValueError, match=message):
        augment.spec_from_config(cfg)
        view_sizes(cfg, 32)


def _assert_views(views, batch):
    assert [v.shape for v in views] == [(batch, s, s, 3) for s in SIZES]
    for view in views:
        assert view.dtype == np.float32 and 0 <= view.min() and view.max() <= 1


def test_host_pipeline_makes_mixed_size_views_of_fixed_size_images():
    cfg = ml_collections.ConfigDict({"name": "digits", "shuffle_buffer": 64, "cache": False})
    specs = augment.spec_from_config(augment_config())
    batch = next(pipeline.pretrain_iterator(cfg, specs, local_batch=8, image_size=16, seed=0, sizes=SIZES))
    assert set(batch) == {"views", "label"} and batch["label"].shape == (8,)
    _assert_views(batch["views"], 8)


def test_host_pipeline_makes_mixed_size_views_of_variable_size_jpegs(tmp_path):
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001.tfrecord")) as writer:
        for i, (height, width) in enumerate([(40, 60), (50, 30), (24, 24), (70, 45)] * 2):
            jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (height, width, 3), np.uint8)).numpy()
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3]))})).SerializeToString())
    cfg = ml_collections.ConfigDict({"name": "tfrecord", "path": str(tmp_path), "num_classes": -1,
                                     "shuffle_buffer": 8, "cache": False})
    specs = augment.spec_from_config(augment_config())
    _assert_views(next(pipeline.pretrain_iterator(cfg, specs, local_batch=4, image_size=16, seed=0,
                                                  sizes=SIZES))["views"], 4)


def test_device_views_have_mixed_sizes_and_do_not_depend_on_the_device_count():
    images = np.random.default_rng(0).integers(0, 256, (8, 20, 20, 3), np.uint8)
    specs = augment.spec_from_config(augment_config())
    results = []
    for count in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:count])
        views = device_augment.make_views(specs, SIZES, mesh)(jax.random.key(3), parallel.shard_batch(images, mesh))
        results.append([np.asarray(v) for v in views])
    _assert_views(results[0], 8)
    for size, one, eight in zip(SIZES, *results):
        if size == 16:
            np.testing.assert_allclose(one, eight, atol=1e-5)
        else:
            # Known and not multi-crop's: at 8 px output a few pixels of the on-device augmentation differ between
            # 1 and 8 devices (two default views at 8 px too), so only the bulk of the local crops is compared.
            assert np.mean(np.abs(one - eight) < 1e-5) > 0.95


def test_resolution_groups_and_global_views():
    a, b = jnp.zeros((2, 16, 16, 3)), jnp.ones((2, 8, 8, 3))
    assert [g.shape[0] for g in resolution_groups([a, a, b, b, b])] == [4, 6]
    assert [g.shape[0] for g in resolution_groups([a, b, a])] == [2, 2, 2]   # only consecutive views group
    assert len(global_views([a, a, b, b, b])) == 2 and len(global_views([a, a])) == 2


def test_network_runs_the_encoder_once_per_size_and_the_head_on_all_rows():
    config = base_config()
    config.model.name = "vit_ti4"
    config.model.vit.update({"depth": 1, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32, "image_size": 16})
    encoder = models.build_encoder(config.model)
    network = SSLNetwork(encoder=encoder, head=models.make_head("v1", hidden_dim=8, out_dim=4, use_bn=False))
    rng = np.random.default_rng(0)
    views = [jnp.asarray(rng.uniform(size=(2, s, s, 3)), jnp.float32) for s in SIZES]
    variables = network.init(jax.random.key(0), views[0], train=True)
    calls = []

    def count_encoder_calls(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name == "encoder":
            calls.append(args[0].shape)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(count_encoder_calls):
        out = network.apply(variables, views, train=False)
    assert calls == [(4, 16, 16, 3), (6, 8, 8, 3)]
    assert out["features"].shape == (10, 16) and out["z"].shape == (10, 4)
    by_view = np.concatenate([encoder.apply({"params": variables["params"]["encoder"]}, v, train=False)
                              for v in views])
    np.testing.assert_allclose(out["features"], by_view, atol=1e-5)



def test_a_two_view_method_refuses_multi_crop_before_building():
    config = base_config()
    config.augment.crops = CROPS
    with pytest.raises(ValueError, match=r"config\.augment\.crops: simclr takes two views of one size"):
        build_method(config, num_classes=10, total_steps=10)
