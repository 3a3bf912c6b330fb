"""Linear evaluation: the classifiers on synthetic features, label subsets, and restoring a pretrained encoder."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslx import data, parallel
from sslx.checkpoint import Checkpointer
from sslx.config import base_config, eval_config
from sslx.evaluators import baselines, common, linear, subsets
from sslx.evaluators.encoders import embed, load_pretrained
from sslx.methods import build_method
from sslx.stages import linear_eval
from sslx.train import create_train_state


def separable(n, num_classes=5, dim=32):
    """Well-separated Gaussian classes: the Bayes classifier is linear and all but perfect."""
    rng = np.random.default_rng(0)
    centres = 4.0 * rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_sgd_on_features_separates_a_linearly_separable_set():
    x, y = separable(2500)
    train_x, train_y, test_x, test_y = x[:2000], y[:2000], x[2000:], y[2000:]
    optimizer = linear.classifier_optimizer(0.1, 5 * (2000 // 100), momentum=0.9, nesterov=True, weight_decay=0.0)
    params = linear.sgd_on_features(train_x, train_y, 5, optimizer, batch_size=100, epochs=5, seed=0)
    assert linear.classifier_accuracy(params, test_x, test_y)["top1"] > 0.99
    fit = linear.fit_logistic_regression(jnp.asarray(train_x), jnp.asarray(train_y), 5, l2=1e-4, steps=100)
    assert linear.classifier_accuracy(fit, test_x, test_y)["top1"] > 0.99


def test_balanced_subset_is_deterministic_and_class_balanced(tmp_path):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 500))
    first = subsets.balanced_subset(labels, 0.01, seed=3)
    assert np.array_equal(first, subsets.balanced_subset(labels, 0.01, seed=3))
    assert not np.array_equal(first, subsets.balanced_subset(labels, 0.01, seed=4))
    assert np.array_equal(np.bincount(labels[first], minlength=10), np.full(10, 5))
    assert len(np.unique(first)) == len(first) == 50
    fit, held = subsets.split_off(np.arange(len(labels)), labels, 0.1, seed=0)
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == len(labels)


def test_label_subset_lists_the_ids_of_balanced_training_examples_disjoint_from_test(cifar10_dir, tmp_path):
    data_cfg = base_config().data
    data_cfg.name, data_cfg.path = "tfrecord", str(cifar10_dir)
    subset = common.labelled_subset(data_cfg, 0.01, seed=3)
    subset.write(tmp_path)
    written = json.loads((tmp_path / "label_subset.json").read_text())
    assert subset.count == written["num_examples"] == 500 and written["indices"] == subset.indices.tolist()
    assert common.labelled_subset(data_cfg, 0.01, seed=3).indices.tolist() == subset.indices.tolist()
    # The ids are the records' own `id` features (train/<class>/<file>), balanced over classes, none from test.
    assert len(set(written["ids"])) == 500 and all(i.startswith("train/") for i in written["ids"])
    classes = [i.split("/")[1] for i in written["ids"]]
    assert all(classes.count(name) == 50 for name in set(classes)) and len(set(classes)) == 10
    assert not set(written["ids"]) & set(data.labels_and_ids(data_cfg, "test")[1])


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_label_fraction_outside_the_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="config.finetune.label_fraction"):
        subsets.check_fraction(fraction, "config.finetune.label_fraction")


def tiny_config():
    c = base_config()
    c.data.name, c.data.image_size = "digits", 8
    c.model.width, c.head.hidden_dim, c.head.out_dim = 0.125, 32, 16
    c.optim.name = "sgd"
    return c


def save_pretraining(workdir, config, step=3):
    """A pretraining workdir without training: config.json and one checkpoint of a fresh state."""
    method = build_method(config, 10, 10)
    state = create_train_state(method, optax.sgd(0.1), jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
    checkpointer = Checkpointer(workdir, keep=2, every_steps=1)
    checkpointer.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), force=True)
    checkpointer.close()
    (workdir / "config.json").write_text(config.to_json_best_effort())
    return method, state


@pytest.mark.parametrize("key, value", [("mode", "slow"), ("solver", "adam"), ("learning_rates", (0.1, -1.0)),
                                        ("epochs", 0), ("crop_area_min", 0.0), ("crop_area_min", 1.5)])
def test_bad_linear_eval_options_are_one_line_errors_naming_the_key(key, value, tmp_path):
    config = eval_config()
    config.pretrained = str(tmp_path)
    config.linear[key] = value
    with pytest.raises(ValueError, match=rf"config\.linear\.{key}=") as error:
        linear_eval.validate(config)
    assert "\n" not in str(error.value)


def test_load_pretrained_restores_encoder_and_head_only(tmp_path):
    config = tiny_config()
    method, state = save_pretraining(tmp_path, config)
    pretrained = load_pretrained(str(tmp_path), None, parallel.make_mesh())
    assert pretrained.step == 3 and set(pretrained.params) == {"encoder", "head"}
    images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
    expected = jax.jit(method.encode)(state.params, state.batch_stats, images)
    for layer, width in ((0, expected.shape[1]), (1, 32)):
        features = jax.jit(lambda v, x: embed(pretrained.config, v, x, layer))(pretrained.variables, images)
        assert features.shape == (4, width)
        if layer == 0:
            np.testing.assert_allclose(features, expected, atol=1e-6)


def test_bad_pretrained_workdirs_name_the_path(tmp_path):
    mesh = parallel.make_mesh()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        load_pretrained(str(tmp_path / "missing"), None, mesh)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(str(tmp_path / "empty"), None, mesh)
    config = tiny_config()
    save_pretraining(tmp_path, config)
    with pytest.raises(FileNotFoundError, match="step 7"):
        load_pretrained(str(tmp_path), 7, mesh)
    config.model.width = 0.25   # config.json now describes another architecture than the checkpoint holds
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    with pytest.raises(ValueError, match=r"checkpoints/3 has \['.*of shape .*another architecture"):
        load_pretrained(str(tmp_path), None, mesh)


def test_baseline_features_are_the_pixels_or_the_architecture_at_a_random_init(tmp_path):
    """`config.baseline` swaps the pretrained encoder for a baseline built from its config.json."""
    config = tiny_config()
    method, state = save_pretraining(tmp_path, config)
    mesh = parallel.make_mesh()
    pretrained = load_pretrained(str(tmp_path), None, mesh)
    images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
    evaluation = eval_config()
    evaluation.baseline, evaluation.pixel_size = "pixels", 8
    apply, variables = baselines.frozen_features(evaluation, pretrained, mesh)
    np.testing.assert_array_equal(apply(variables, images), images.reshape(4, -1))
    evaluation.baseline = "random_init"
    apply, variables = baselines.frozen_features(evaluation, pretrained, mesh)
    features = apply(variables, images)
    trained = jax.jit(method.encode)(state.params, state.batch_stats, images)
    assert features.shape == trained.shape and not np.allclose(features, trained)
    # Every residual branch is on: the features change when any pixel does, not only the stem's few positions.
    moved = apply(variables, images.at[:, 7, 7, :].add(1.0))
    assert not np.allclose(moved, features)


@pytest.mark.parametrize("baseline, head_layer, message", [("noise", 0, r"config\.baseline='noise' is not one"),
                                                           ("pixels", 1, r"leave config\.head_layer 0")])
def test_bad_baselines_are_one_line_errors(baseline, head_layer, message):
    config = eval_config()
    config.pretrained, config.baseline, config.head_layer = "/somewhere", baseline, head_layer
    with pytest.raises(ValueError, match=message):
        linear_eval.validate(config)


def test_knn_and_linear_eval_share_saved_features_of_the_same_network_only(tmp_path, monkeypatch):
    """config.features_dir: the second stage on one encoder reads the first one's features (and scores the same
    as extracting them); another checkpoint in the same workdir, or a baseline, gets features of its own."""
    from sslx.stages import knn
    save_pretraining(tmp_path / "pretrain", tiny_config())
    evaluation = eval_config()
    evaluation.pretrained, evaluation.embedding_map_points = str(tmp_path / "pretrain"), 0
    evaluation.linear.mode, evaluation.linear.solver, evaluation.knn.ks = "fast", "lbfgs", (5,)
    extracted = linear_eval.run_linear_eval(evaluation, str(tmp_path / "extracted"))
    evaluation.features_dir = str(tmp_path / "features")
    knn.run_knn(evaluation, str(tmp_path / "knn"))
    saved = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(saved) == 2 and not any(name.endswith(".partial") for name in saved)

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")
    monkeypatch.setattr(common, "split_features", no_extraction)
    shared = linear_eval.run_linear_eval(evaluation, str(tmp_path / "shared"))
    assert shared["top1"] == extracted["top1"] and shared["top5"] == extracted["top5"]
    monkeypatch.undo()

    config = tiny_config()
    method = build_method(config, 10, 10)   # a retrained step 4 in the same workdir: other variables
    state = create_train_state(method, optax.sgd(0.1), jax.random.key(7), jnp.zeros((2, 8, 8, 3)))
    checkpointer = Checkpointer(tmp_path / "pretrain", keep=2, every_steps=1)
    checkpointer.save(4, state.replace(step=jnp.asarray(4, jnp.int32)), force=True)
    checkpointer.close()
    knn.run_knn(evaluation, str(tmp_path / "knn4"))
    evaluation.baseline = "random_init"
    knn.run_knn(evaluation, str(tmp_path / "knn_random"))
    assert len(list((tmp_path / "features").iterdir())) == 6
