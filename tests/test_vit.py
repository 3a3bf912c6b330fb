"""ViT encoders: the named variants' shapes and parameter counts, position embeddings resized for other input sizes,
a full step on 1 vs 8 devices, and every stage on a tiny ViT (an encoder without BatchNorm) from pretraining on."""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import sslx
from sslx import export, models
from sslx.config import base_config, distill_config, eval_config
from sslx.methods import build_method
from sslx.models.vit import ViT, resize_position_embeddings
from sslx.stages import distill, finetune, knn, linear_eval
from test_methods import batch, run_steps, tiny_config
from test_pretrain import REPO

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
TINY_VIT = {"depth": 2, "hidden_dim": 32, "num_heads": 2, "mlp_dim": 64}


def vit_model_config(name="vit_ti4", **fields):
    model_cfg = base_config().model
    model_cfg.name = name
    model_cfg.vit.update(fields)
    return model_cfg


def num_params(variables) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name, size, dim, expected", [
    # timm's vit_small/base_patch16_224 less their 1000-class head and the class token's position embedding,
    # which sslx does not have (it would only add a second learned vector to the class token).
    ("vit_s16", 224, 384, 22_050_664 - 385_000 - 384),
    ("vit_b16", 224, 768, 86_567_656 - 769_000 - 768),
    # timm's vit_tiny_patch16_224 (5,717,416) less head and class position, with 4 px patches on an 8x8 grid.
    ("vit_ti4", 32, 192, 5_717_416 - 193_000 - 192 - (16 * 16 - 4 * 4) * 3 * 192 - (196 - 64) * 192),
])
def test_named_variants_give_class_token_features_and_reference_parameter_counts(name, size, dim, expected):
    model = models.build_encoder(vit_model_config(name))
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    features, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), images)
    assert features.shape == (2, dim) and features.dtype == jnp.float32
    assert model.feature_dim == dim == models.feature_dim(vit_model_config(name))
    assert set(variables) == {"params"}   # LayerNorm only: no batch_stats
    assert num_params(variables) == expected
    # DINO's 96 px local crops of a 224 px model: the same parameters, a 6x6 grid.
    local = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                           jax.ShapeDtypeStruct((3, 96, 96, 3), jnp.float32)) if size == 224 else None
    assert local is None or local.shape == (3, dim)


def small_vit(image_size: int) -> ViT:
    return ViT(patch_size=4, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32, image_size=image_size)


def test_other_input_sizes_take_the_position_embeddings_resized_bicubically():
    model = small_vit(16)                                       # embeddings for a 4x4 grid of 4 px patches
    variables = jit(functools.partial(model.init, train=False))(jax.random.key(0), np.zeros((1, 16, 16, 3)))
    embeddings = variables["params"]["position_embedding"]
    assert embeddings.shape == (4, 4, 16)
    for size in (8, 24):                                        # a 2x2 grid (down) and a 6x6 grid (up)
        images = np.random.default_rng(size).uniform(size=(2, size, size, 3)).astype(np.float32)
        grid = size // 4
        # The same network made for this size, holding the embeddings resized outside it, is the reference.
        resized = jax.image.resize(embeddings, (grid, grid, 16), "bicubic", antialias=False)
        reference = small_vit(size).apply({"params": {**variables["params"], "position_embedding": resized}},
                                          images, train=False)
        np.testing.assert_allclose(jit(functools.partial(model.apply, train=False))(variables, images), reference,
                                   rtol=1e-5, atol=1e-5)


def test_resize_keeps_each_axis_apart_and_is_the_identity_at_the_native_grid():
    rows = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 4, 3), np.float32)  # varies down rows only
    assert resize_position_embeddings(rows, (4, 4)) is rows
    wide = np.asarray(resize_position_embeddings(rows, (2, 6)))
    assert wide.shape == (2, 6, 3)
    np.testing.assert_allclose(wide - wide[:, :1], 0.0, atol=1e-5)   # still constant along each row
    assert wide[1, 0, 0] > wide[0, 0, 0]                        # and increasing down the columns
    np.testing.assert_allclose(resize_position_embeddings(np.ones((4, 4, 3), np.float32), (7, 5)), 1.0, atol=1e-6)


def test_bad_sizes_are_one_line_errors_naming_the_key():
    model = small_vit(16)
    with pytest.raises(ValueError, match=r"10x10 input .*\(config\.model\.vit\.patch_size\)"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                       jax.ShapeDtypeStruct((1, 10, 10, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"config\.model\.vit\.hidden_dim"):
        models.build_encoder(vit_model_config(hidden_dim=30, num_heads=4))
    with pytest.raises(ValueError, match=r"config\.model\.vit\.image_size"):
        models.build_encoder(vit_model_config(image_size=30))


def test_remat_wraps_each_vit_block_and_keeps_its_parameters():
    plain = models.build_encoder(vit_model_config(**TINY_VIT))
    remat_cfg = vit_model_config(**TINY_VIT)
    remat_cfg.remat = True
    remat = models.build_encoder(remat_cfg)
    images = jnp.zeros((2, 8, 8, 3))
    shapes = jax.eval_shape(lambda: plain.init(jax.random.key(0), images, train=False))
    assert jax.eval_shape(lambda: remat.init(jax.random.key(0), images, train=False)) == shapes
    variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    assert str(jax.make_jaxpr(lambda v: remat.apply(v, images, train=True))(variables)).count("remat") == 2


def test_drop_path_skips_whole_residual_branches_per_example_at_rates_rising_over_the_blocks():
    """Depth 2 at drop_path_rate 0.5: the first block is never dropped, the last one's two branches each with p 0.5,
    so about a quarter of the examples come out exactly as the network without its last block computes them."""
    model = ViT(patch_size=4, hidden_dim=16, depth=2, num_heads=2, mlp_dim=32, image_size=8, drop_path_rate=0.5)
    images = np.random.default_rng(0).uniform(size=(512, 8, 8, 3)).astype(np.float32)
    variables = jit(functools.partial(model.init, train=False))(jax.random.key(0), images[:1])
    deterministic = jit(functools.partial(model.apply, train=False))(variables, images)
    # Without a 'dropout' rng (EMA teachers and targets) and in eval mode the encoder is deterministic.
    np.testing.assert_array_equal(jit(functools.partial(model.apply, train=True))(variables, images), deterministic)
    dropped = jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    first, second = dropped(variables, images, jax.random.key(1)), dropped(variables, images, jax.random.key(2))
    assert not np.allclose(first, second)
    params = dict(variables["params"])
    without_last = {"params": {**{k: v for k, v in params.items() if k != "block2"},
                               "block1": params["block1"]}}
    shallow = ViT(patch_size=4, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32, image_size=8)
    reference = jit(functools.partial(shallow.apply, train=False))(without_last, images)
    skipped = np.all(np.abs(np.asarray(first) - np.asarray(reference)) < 1e-5, axis=1)
    assert 0.17 < skipped.mean() < 0.33, skipped.mean()


def test_drop_path_is_drawn_for_the_online_network_only_and_refuses_gradcache():
    config = vit_method_config("simclr")   # the method with GradCache
    config.model.vit.drop_path_rate = 0.3
    method = build_method(config, num_classes=10, total_steps=10)
    images = jnp.asarray(batch()["views"][0][:4])
    params, batch_stats, _ = method.init(jax.random.key(0), images)
    forward = lambda rng: method.network(None).apply(  # noqa: E731
        models.network_variables(params, batch_stats), images, train=True, mutable=["batch_stats"],
        rngs=None if rng is None else {"dropout": rng})[0]["features"]
    assert not np.allclose(forward(jax.random.key(1)), forward(jax.random.key(2)))
    np.testing.assert_array_equal(forward(None), forward(None))
    config.micro_batch_size = 2
    with pytest.raises(ValueError, match=r"config\.model\.vit\.drop_path_rate > 0 and config\.micro_batch_size"):
        build_method(config, num_classes=10, total_steps=10)
    config.micro_batch_size, config.model.vit.drop_path_rate = 0, 1.0
    with pytest.raises(ValueError, match=r"config\.model\.vit\.drop_path_rate=1\.0 must be in \[0, 1\)"):
        build_method(config, num_classes=10, total_steps=10)


def vit_method_config(method):
    """test_methods' tiny config with a 2-block ViT of 2 px patches (a 2x2 grid on its 4 px views, embeddings made
    for 8 px and resized), so the step's collectives run with an encoder without BatchNorm."""
    config = tiny_config(method)
    config.model.name = "vit_ti4"
    config.model.vit.update(TINY_VIT, hidden_dim=16, patch_size=2, image_size=8)
    return config


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_vit_step_one_vs_eight_devices(method):
    method = build_method(vit_method_config(method), num_classes=10, total_steps=10)
    (_, s1, m1, _), (_, s8, m8, _) = run_steps(method, 1, [batch()]), run_steps(method, 8, [batch()])
    np.testing.assert_allclose(m8[0]["loss"], m1[0]["loss"], rtol=1e-5, atol=1e-6)
    assert "encoder" in s1[0].params and "encoder" not in s1[0].batch_stats   # the heads' BN only
    g1 = jax.tree.map(lambda b, a: b - a, s1[0].params, s1[1].params)
    g8 = jax.tree.map(lambda b, a: b - a, s8[0].params, s8[1].params)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1["encoder"]))
    assert scale > 1e-5
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * scale, err_msg=jax.tree_util.keystr(path))


def pretrain_cli(workdir, method, *overrides):
    """sslx-pretrain as a user runs it, on the 8 simulated devices: a tiny ViT, digits, 4 steps."""
    args = ["--config", "configs/quickstart.py", "--workdir", str(workdir), f"--config.method={method}",
            "--config.model.name=vit_ti4", *[f"--config.model.vit.{k}={v}" for k, v in TINY_VIT.items()],
            "--config.batch_size=32", "--config.total_steps=4", "--config.optim.warmup_steps=1",
            "--config.log_every_steps=2", "--config.checkpoint_every_steps=2", "--config.eval.probe_steps=20",
            "--config.eval.pixel_probe_size=0", *overrides]
    code = "import sys; sys.argv[0] = 'sslx-pretrain'; from sslx.cli import pretrain; pretrain()"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module")
def vit_pretrained(tmp_path_factory):
    """SimCLR with a BN-free head (no batch_stats anywhere in the network) and BYOL (BN in its heads) on a ViT."""
    root = tmp_path_factory.mktemp("vit")
    results = {"simclr": pretrain_cli(root / "simclr", "simclr", "--config.head.use_bn=False"),
               "byol": pretrain_cli(root / "byol", "byol", "--config.predictor.num_layers=2",
                                    "--config.head.final_bn=False", "--config.eval.linear_probe=False")}
    return root, results


def test_simclr_and_byol_pretrain_a_vit_from_the_cli(vit_pretrained):
    _, results = vit_pretrained
    for method, result in results.items():
        assert result["model"] == "vit_ti4" and result["step"] == 4, method
        assert np.isfinite(result["loss"]), method
    assert 0.0 <= results["simclr"]["linear_probe_top1"] <= 1.0   # the end-of-run probe read the ViT's features


def eval_cfg(pretrained):
    c = eval_config()
    c.pretrained = str(pretrained)
    c.eval_batch_size = 304
    c.embedding_map_points = 0
    c.linear.mode, c.linear.epochs, c.linear.batch_size = "fast", 2, 256
    c.finetune.epochs, c.finetune.batch_size, c.finetune.log_every_steps = 0.1, 64, 5
    return c


def test_linear_eval_knn_finetune_and_distill_run_on_the_vit_checkpoint(vit_pretrained, tmp_path):
    root, _ = vit_pretrained
    for method in ("simclr", "byol"):
        config = eval_cfg(root / method)
        linear = linear_eval.run_linear_eval(config, str(tmp_path / f"linear_{method}"))
        neighbours = knn.run_knn(config, str(tmp_path / f"knn_{method}"))
        assert 0.1 < linear["top1"] <= 1.0 and 0.1 < neighbours["top1"] <= 1.0, (method, linear, neighbours)
    tuned = finetune.run_finetune(eval_cfg(root / "simclr"), str(tmp_path / "finetune"))
    assert tuned["finetune_steps"] > 0 and 0.0 <= tuned["top1"] <= 1.0
    # SimCLRv2's distillation of that fine-tuned ViT (no BatchNorm anywhere) into a ViT student.
    config = distill_config()
    config.teacher, config.eval_batch_size = str(tmp_path / "finetune"), 304
    config.distill.batch_size, config.distill.total_steps, config.distill.log_every_steps = 64, 2, 1
    distilled = distill.run_distill(config, str(tmp_path / "distill"))
    assert distilled["step"] == 2 and distilled["model"] == "vit_ti4" and 0.0 <= distilled["top1"] <= 1.0


def test_the_vit_workdir_embeds_and_exports_without_batch_stats(vit_pretrained, tmp_path):
    root, _ = vit_pretrained
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    expected = sslx.load_encoder(root / "simclr").embed(images)
    description = export.export(str(root / "simclr"), str(tmp_path / "export"), platforms=("cpu",))
    assert description["architecture"]["encoder"]["family"] == "vit"
    weights = export.load_weights(str(tmp_path / "export" / "weights.npz"))
    assert set(weights) == {"params"} and "position_embedding" in weights["params"]
    served = tf.saved_model.load(str(tmp_path / "export" / "saved_model")).signatures["serving_default"](
        images=tf.constant(images))["features"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
