"""The reproduction runner (launch/reproduce.py): a slice of the cifar10-cpu suite on real CIFAR-10 must rank
both methods above both baselines on kNN, write its table, curve and JSON, and resume without retraining."""
import importlib.util
import json
import pathlib
import sys

import pytest

from sslx.config import load_recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
SLICE_METHODS = "simclr,supcon"
# kNN top-1 over the better baseline. Measured on this slice (8 simulated devices, CI run on 2 cores, 10 min):
# SimCLR 37.9, SupCon 36.4, raw pixels 33.5, random init 28.2, i.e. +4.4 and +2.9 points.
MARGIN = 0.01


def runner():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "launch" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module
    spec.loader.exec_module(module)
    return module


def suite(name="cifar10_cpu"):
    return load_recipe(REPO / "configs" / f"reproduce_{name}.py")


def slice_config(cifar10_dir):
    """cifar10-cpu with two of its eight methods."""
    c = suite()
    c.methods = SLICE_METHODS
    c.pretrain.data.path = str(cifar10_dir)
    return c


def test_cifar10_cpu_slice_beats_both_baselines(cifar10_dir, tmp_path):
    reproduce = runner()
    results = reproduce.run_suite(slice_config(cifar10_dir), str(tmp_path))
    rows = {row["method"]: row for row in results["rows"]}
    print({name: (round(row["knn_top1"], 4), round(row["linear_top1"], 4)) for name, row in rows.items()})
    assert list(rows) == ["simclr", "supcon", "raw pixels", "random init"]
    best_baseline = max(rows["raw pixels"]["knn_top1"], rows["random init"]["knn_top1"])
    for method in SLICE_METHODS.split(","):
        assert rows[method]["knn_top1"] > best_baseline + MARGIN, rows
        assert rows[method]["epochs"] == pytest.approx(suite().pretrain.epochs, abs=0.01)
        assert not (tmp_path / method / "features").exists()   # the kNN and linear stages' shared features
    assert results["methods_beating_baselines_knn"] == 2
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"] == results["rows"]
    table = (tmp_path / "results.md").read_text()
    assert "| simclr | resnet18 0.125x CIFAR stem, 16 px |" in table and "| raw pixels | none |" in table
    assert (tmp_path / "knn_curve.png").stat().st_size > 0
    # The curve: periodic kNN during pretraining, then the kNN stage's score at the last epoch.
    epochs, top1 = reproduce.knn_series(tmp_path / "simclr" / "pretrain", "knn_k200_top1",
                                        (rows["simclr"]["epochs"], rows["simclr"]["knn_top1"]),
                                        rows["simclr"]["epochs"] / json.loads(
                                            (tmp_path / "simclr" / "pretrain" / "results.json").read_text())["step"])
    assert epochs == pytest.approx([0.5, 1.0, 1.5, 1.75], abs=0.01) and epochs[-1] == rows["simclr"]["epochs"]
    # A rerun finds every stage done: same rows, nothing retrained.
    before = (tmp_path / "supcon" / "pretrain" / "results.json").read_text()
    again = reproduce.run_suite(slice_config(cifar10_dir), str(tmp_path))
    assert again["rows"] == results["rows"]
    assert (tmp_path / "supcon" / "pretrain" / "results.json").read_text() == before


def test_unknown_key_in_the_suite_names_it():
    c = suite()
    c.pretrain.modle = {"width": 0.5}
    with pytest.raises(ValueError, match=r"config\.pretrain\.modle is not a key"):
        runner().pretrain_config(c, "simclr")


def test_unknown_method_names_the_known_ones():
    c = suite()
    c.methods = "simclr,dino_v9"
    with pytest.raises(ValueError, match=r"unknown: \['dino_v9'\]"):
        runner().methods_of(c)


@pytest.mark.parametrize("name", ["cifar10_cpu", "cifar10_200ep", "cifar10_1000ep"])
def test_every_suite_builds_every_method_recipe(name, cifar10_dir):
    """Every shipped suite's overrides apply to every method's recipe (TFDS suites read the local TFRecords here)."""
    c = suite(name)
    c.pretrain.data = {"name": "tfrecord", "path": str(cifar10_dir)}
    reproduce = runner()
    for method in reproduce.methods_of(c):
        recipe, examples = reproduce.pretrain_config(c, method)
        assert recipe.method == method and recipe.eval.periodic == "knn"
        assert examples == 50000
        assert recipe.eval.every_steps == round(c.knn_every_epochs * examples / recipe.batch_size)
    assert set(c.anchors) <= set(reproduce.methods_of(c))
