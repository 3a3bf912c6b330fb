"""Weighted kNN against a direct numpy reference; the device-sharded bank gives the unsharded answer."""
import jax
import numpy as np
import pytest

from sslx import parallel
from sslx.evaluators.knn import knn_classify


def reference_knn(train_x, train_y, test_x, test_y, num_classes, k, temperature):
    """Straight from the definition: cosine similarity to every training row, exp(sim/T)-weighted class votes."""
    train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test_x = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    top1 = top5 = 0
    for x, y in zip(test_x, test_y):
        sims = train_x @ x
        nearest = np.argsort(-sims)[:k]
        scores = np.zeros(num_classes)
        for i in nearest:
            scores[train_y[i]] += np.exp(sims[i] / temperature)
        ranked = np.argsort(-scores, kind="stable")   # zero-vote classes rank by index, as in knn_classify
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    return top1 / len(test_y), top5 / len(test_y)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    train_y = rng.integers(0, 12, 403)   # not a multiple of 8: the bank gets padded
    test_y = rng.integers(0, 12, 150)
    train_x = centres[train_y] + 1.5 * rng.normal(size=(403, 16))
    test_x = centres[test_y] + 1.5 * rng.normal(size=(150, 16))
    return train_x.astype(np.float32), train_y, test_x.astype(np.float32), test_y


def test_knn_matches_the_numpy_reference(features):
    train_x, train_y, test_x, test_y = features
    mesh = parallel.make_mesh()
    assert mesh.size == 8
    got = knn_classify(train_x, train_y, test_x, test_y, 12, mesh, ks=(5, 20, 200), temperature=0.1,
                       query_chunk=64)
    for k in (5, 20, 200):
        top1, top5 = reference_knn(train_x, train_y, test_x, test_y, 12, k, 0.1)
        assert got[f"k{k}_top1"] == pytest.approx(top1, abs=1e-9), k
        assert got[f"k{k}_top5"] == pytest.approx(top5, abs=1e-9), k
    assert 0.3 < got["k20_top1"] < 1.0   # the data is neither trivial nor hopeless


def test_sharded_equals_unsharded(features):
    train_x, train_y, test_x, test_y = features
    sharded = knn_classify(train_x, train_y, test_x, test_y, 12, parallel.make_mesh())
    single = knn_classify(train_x, train_y, test_x, test_y, 12, parallel.make_mesh(jax.devices()[:1]))
    assert sharded == single


def test_k_larger_than_the_bank_uses_every_row(features):
    train_x, train_y, test_x, test_y = features
    got = knn_classify(train_x[:30], train_y[:30], test_x, test_y, 12, parallel.make_mesh(), ks=(200,))
    top1, top5 = reference_knn(train_x[:30], train_y[:30], test_x, test_y, 12, 30, 0.07)
    assert (got["k200_top1"], got["k200_top5"]) == pytest.approx((top1, top5))


def test_periodic_knn_during_pretraining_is_logged_like_any_metric(tmp_path):
    import json
    from test_pretrain import digits_config
    from sslx.stages import pretrain

    config = digits_config(total_steps=4)
    config.eval.every_steps, config.eval.periodic, config.knn.train_examples = 2, "knn", 512
    pretrain.run_pretraining(config, str(tmp_path))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    knn_steps = [entry["step"] for entry in logged if "knn_k20_top1" in entry]
    assert knn_steps == [2, 4]
    assert all(0.0 <= entry["knn_k200_top5"] <= 1.0 for entry in logged if "knn_k200_top5" in entry)


def test_unknown_periodic_evaluator_is_named(tmp_path):
    from test_pretrain import digits_config
    from sslx.stages import pretrain

    config = digits_config(total_steps=2)
    config.eval.every_steps, config.eval.periodic = 1, "knn,svm"
    with pytest.raises(ValueError, match=r"config.eval.periodic names unknown evaluators \['svm'\]"):
        pretrain.run_pretraining(config, str(tmp_path))
