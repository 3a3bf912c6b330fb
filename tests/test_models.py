"""Encoder and head tests: shapes and dtypes, parameter counts, identity-at-init blocks, global vs per-replica BN."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslx.config import base_config
from sslx.models import (BasicBlock, BottleneckBlock, DinoHead, LinearClassifier, ProjectionHead, ResNet,
                         build_encoder, feature_dim, make_head)

SK_RATIO = 0.0625  # SimCLRv2's setting
# Each test compiles a few small programs once: skip XLA's LLVM optimisation, which dominates their cost on CPU.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def normal(*shape: int) -> np.ndarray:
    """Test inputs from NumPy: jax.random would compile a fresh sampler for every shape."""
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def num_params(variables) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


def model_config(name: str, **fields):
    """base_config().model with `name` and `fields` overridden, as a recipe or the command line does."""
    model_cfg = base_config().model
    model_cfg.update(name=name, **fields)
    return model_cfg


def tiny(block, **fields) -> ResNet:
    """Stem, one unstrided and one strided block (both with a projection for bottlenecks), 8-16 channels wide."""
    return ResNet(stage_sizes=(1, 1), block=block, width=0.125, **fields)


def abstract_init(model, image_size: int, batch: int = 2):
    """(features, variables) as shapes only: nothing is compiled or run."""
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), images)


@pytest.mark.parametrize("sk_ratio", [0.0, SK_RATIO])
@pytest.mark.parametrize("width", [0.25, 1.0])
@pytest.mark.parametrize("cifar_stem", [True, False])
@pytest.mark.parametrize("name, base_dim", [("resnet18", 512), ("resnet50", 2048)])
def test_feature_shapes_and_dtypes(name, base_dim, cifar_stem, width, sk_ratio):
    model_cfg = model_config(name, width=width, cifar_stem=cifar_stem, sk_ratio=sk_ratio, dtype="bfloat16")
    features, variables = abstract_init(build_encoder(model_cfg), 32 if cifar_stem else 64)
    assert features.shape == (2, int(base_dim * width)) == (2, feature_dim(model_cfg))
    assert features.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_bfloat16_sk_forward_is_finite_float32():
    model = tiny(BottleneckBlock, sk_ratio=SK_RATIO, dtype=jnp.bfloat16)  # also takes the SK deep stem
    images = normal(4, 16, 16, 3)
    variables = jit(functools.partial(model.init, train=False))(jax.random.key(0), images)
    features, updates = jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(variables, images)
    assert features.shape == (4, 64) and features.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(features)))
    assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_176_512),  # torchvision resnet18 without its 513,000-parameter fc
    ("resnet50", 23_508_032),  # torchvision resnet50 without its 2,049,000-parameter fc
])
def test_parameter_counts_match_torchvision(name, expected):
    _, variables = abstract_init(build_encoder(model_config(name, cifar_stem=False)), 224, batch=1)
    assert num_params(variables) == expected


def test_sk_resnet50_parameter_count_matches_simclr_v2():
    # SimCLRv2 Table 1 lists ResNet-50 (1x) with SK at 35M: the second 3x3 branch doubles the 3x3 convs' 11.3M.
    # (The ~27M often quoted is SKNet-50, whose convs are grouped as in ResNeXt.)
    _, variables = abstract_init(build_encoder(model_config("resnet50", cifar_stem=False, sk_ratio=SK_RATIO)), 224,
                                 batch=1)
    assert 34.5e6 < num_params(variables) < 36e6


@pytest.mark.parametrize("block, last_bn", [(BasicBlock, "block2_bn"), (BottleneckBlock, "block3_bn")])
def test_residual_branches_are_zero_at_init(block, last_bn):
    model = tiny(block, cifar_stem=True)
    images = normal(2, 8, 8, 3)
    variables = jit(functools.partial(model.init, train=False))(jax.random.key(0), images)
    blocks = [value for key, value in variables["params"].items() if key.startswith("stage")]
    assert len(blocks) == 2 and all(not np.any(params[last_bn]["scale"]) for params in blocks)

    _, state = jit(functools.partial(model.apply, train=True, mutable=["batch_stats", "intermediates"],
                                     capture_intermediates=lambda module, _: module.name == last_bn))(
        variables, images)
    branch_outputs = jax.tree.leaves(state["intermediates"])
    assert len(branch_outputs) == len(blocks)
    for output in branch_outputs:
        np.testing.assert_array_equal(output, 0.0)


@pytest.mark.parametrize("zero_init_residual", [True, False])
def test_random_init_features_see_the_whole_image_only_with_residual_branches_on(zero_init_residual):
    """At zero-init the network is its shortcuts; at 8 px, ResNet-18's three 1x1 stride-2 projections read the stem
    output at (0, 0) alone, which sees pixels [0:2, 0:2]. The pretraining's random-init baseline turns them on."""
    model = build_encoder(model_config("resnet18", width=0.0625, cifar_stem=True,
                                       zero_init_residual=zero_init_residual))
    images = normal(2, 8, 8, 3)
    variables = jit(functools.partial(model.init, train=False))(jax.random.key(0), images)
    scales = [v["block2_bn"]["scale"] for k, v in variables["params"].items() if k.startswith("stage")]
    assert len(scales) == 8 and all(np.all(s == (0.0 if zero_init_residual else 1.0)) for s in scales)
    away_from_the_corner = images.copy()
    away_from_the_corner[:, 2:, 2:] += 1.0
    encode = jit(functools.partial(model.apply, train=False))
    moved = np.abs(encode(variables, away_from_the_corner) - encode(variables, images)).max()
    assert (moved == 0.0) if zero_init_residual else (moved > 1e-3)


def sharded_train_forward(model, variables, images, mesh):
    """Per-replica forward with train=True; each replica's updated batch_stats come back stacked on axis 0."""
    def forward(variables, images):
        features, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return features, jax.tree.map(lambda stat: stat[None], updates["batch_stats"])

    step = jit(jax.shard_map(forward, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P("batch"), P("batch"))))
    features, stats = step(jax.device_put(variables, NamedSharding(mesh, P())),
                           jax.device_put(images, NamedSharding(mesh, P("batch"))))
    return np.asarray(features), jax.tree.map(np.asarray, stats)


def test_global_batch_norm_matches_full_batch_and_per_replica_matches_shards():
    mesh = jax.make_mesh((8,), ("batch",))
    encoder = functools.partial(tiny, BasicBlock, cifar_stem=True)
    images = normal(16, 8, 8, 3) * 2.0 + 0.5
    # Params do not depend on bn_axis_name, and the axis is unbound outside shard_map: init without it.
    variables = jit(functools.partial(encoder().init, train=False))(jax.random.key(0), images)
    apply_single = jit(functools.partial(encoder().apply, train=True, mutable=["batch_stats"]))

    full_features, full_updates = apply_single(variables, images)
    global_features, global_stats = sharded_train_forward(encoder(bn_axis_name="batch"), variables, images, mesh)
    np.testing.assert_allclose(global_features, full_features, rtol=1e-4, atol=1e-4)
    for replica in range(8):
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
                     jax.tree.map(lambda stat: stat[replica], global_stats), full_updates["batch_stats"])

    _, local_stats = sharded_train_forward(encoder(), variables, images, mesh)
    for replica, shard in enumerate(np.split(images, 8)):
        _, shard_updates = apply_single(variables, shard)
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
                     jax.tree.map(lambda stat: stat[replica], local_stats), shard_updates["batch_stats"])
    differences = jax.tree.map(lambda local, full: float(np.max(np.abs(local[0] - full))),
                               local_stats, full_updates["batch_stats"])
    assert max(jax.tree.leaves(differences)) > 1e-3


def test_unknown_encoder_names_the_config_key():
    with pytest.raises(ValueError, match=r"config\.model\.name.*resnet50"):
        build_encoder(model_config("resnet51"))


@pytest.mark.parametrize("version, hidden_dim, dims", [
    ("v1", None, [24, 24, 8]),
    ("v2", 16, [24, 16, 16, 8]),
])
def test_projection_head_hiddens_and_offsets(version, hidden_dim, dims):
    head = make_head(version, hidden_dim=hidden_dim, out_dim=8, dtype=jnp.bfloat16)
    x = normal(4, 24)
    variables = jit(functools.partial(head.init, train=False))(jax.random.key(0), x)
    (z, hiddens), _ = jit(functools.partial(head.apply, train=True, mutable=["batch_stats"]))(variables, x)
    assert [h.shape[-1] for h in hiddens] == dims
    assert z.dtype == jnp.float32
    np.testing.assert_array_equal(z, hiddens[-1])
    np.testing.assert_array_equal(hiddens[0], x)

    params, last = variables["params"], len(dims) - 2
    assert all(set(params[f"dense{layer}"]) == {"kernel"} for layer in range(last + 1))
    assert all(set(params[f"bn{layer}"]) == {"scale", "bias"} for layer in range(last))
    assert set(params[f"bn{last}"]) == {"scale"}


def test_projection_head_without_bn_keeps_offsets_off_the_final_layer():
    head = ProjectionHead(num_layers=3, out_dim=8, use_bn=False)
    params = jax.eval_shape(functools.partial(head.init, train=False), jax.random.key(0), jnp.ones((2, 12)))["params"]
    assert [set(params[f"dense{layer}"]) for layer in range(3)] == [{"kernel", "bias"}] * 2 + [{"kernel"}]


def test_unknown_head_version_names_the_config_key():
    with pytest.raises(ValueError, match=r"config\.head\.version"):
        make_head("v3")


def test_linear_classifier_starts_near_uniform_logits():
    classifier = LinearClassifier(num_classes=10, dtype=jnp.bfloat16)
    x = normal(4, 32)
    variables = jit(classifier.init)(jax.random.key(0), x)
    logits = jit(classifier.apply)(variables, x)
    kernel = variables["params"]["Dense_0"]["kernel"]
    # Non-zero, so LARS's norm-proportional steps can grow it; small, so the softmax starts near uniform.
    assert 0.005 < float(np.std(kernel)) < 0.02
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    assert float(np.abs(logits).max()) < 0.5


@pytest.mark.parametrize("learn_last_scale", [False, True])
def test_dino_head_ends_in_a_weight_normalised_layer(learn_last_scale):
    head = DinoHead(out_dim=10, hidden_dim=16, bottleneck_dim=8, num_layers=3, learn_last_scale=learn_last_scale)
    features = normal(4, 12)
    variables = jit(functools.partial(head.init, train=False))(jax.random.key(0), features)
    logits, hiddens = jit(functools.partial(head.apply, train=False))(variables, features)
    assert [h.shape[-1] for h in hiddens] == [12, 16, 16, 8, 8, 10] and logits.dtype == jnp.float32
    last = variables["params"]["last_layer"]
    assert set(last) == ({"kernel", "scale"} if learn_last_scale else {"kernel"})   # the norm g: frozen at 1
    direction = np.asarray(last["kernel"])
    bottleneck = np.asarray(hiddens[3]) / np.linalg.norm(hiddens[3], axis=-1, keepdims=True)
    np.testing.assert_allclose(hiddens[4], bottleneck, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, bottleneck @ (direction / np.linalg.norm(direction, axis=0)), rtol=1e-4,
                               atol=1e-6)
    # Only each column's direction matters: rescaling it changes nothing, and its gradient is orthogonal to it.
    rescaled = jax.tree.map(lambda x: x, variables)
    rescaled["params"]["last_layer"]["kernel"] = direction * np.linspace(0.5, 3.0, 10, dtype=np.float32)
    np.testing.assert_allclose(jit(functools.partial(head.apply, train=False))(rescaled, features)[0], logits,
                               rtol=1e-4, atol=1e-6)
    grads = jax.grad(lambda v: jnp.sum(head.apply(v, features, train=False)[0] ** 3))(variables)
    kernel_grad = np.asarray(grads["params"]["last_layer"]["kernel"])
    assert np.abs(kernel_grad).max() > 1e-4
    np.testing.assert_allclose(np.sum(kernel_grad * direction, axis=0), 0.0, atol=1e-6)
