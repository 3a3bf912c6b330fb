"""Reproduction suites: every listed method's recipe, scored by kNN and linear eval next to two baselines.

    python launch/reproduce.py --config configs/reproduce_cifar10_cpu.py --workdir ROOT [--config.methods=simclr,byol]

For each method, under ROOT/<method>/: pretrain (the method's recipe with the suite's overrides, kNN every
`knn_every_epochs` for the curve) -> knn (k 200, T 0.07 by default) -> linear (fast mode). The baselines are the
same two evaluations of the raw pixels and of the encoder at a random initialisation, under ROOT/baselines/,
measured in the same run on the same data. A stage whose workdir holds results.json is skipped and pretraining
resumes from its checkpoints, so rerunning the command continues an interrupted suite. Writes ROOT/results.md
(the table), ROOT/results.json (the rows, the published anchors and the checks) and ROOT/knn_curve.png.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import ml_collections
from etils import epath

from sslx import paths

REPO = pathlib.Path(__file__).resolve().parents[1]
BASELINES = (("pixels", "raw pixels"), ("random_init", "random init"))
EVALS = ("knn", "linear")


def methods_of(config: ml_collections.ConfigDict) -> list[str]:
    from sslx.methods import METHODS
    methods = [name.strip() for name in config.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if not methods or unknown:
        raise ValueError(f"config.methods={config.methods!r} must name methods from {sorted(METHODS)}, "
                         f"comma-separated (unknown: {unknown})")
    return methods


def merge(target: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict, where: str) -> None:
    """Sets every key of `overrides` in `target`, recursing into sections; a key the target lacks is an error."""
    for key, value in overrides.items():
        if key not in target:
            raise ValueError(f"{where}.{key} is not a key of the recipe: check the spelling against sslx/config.py")
        if isinstance(value, ml_collections.ConfigDict):
            merge(target[key], value, f"{where}.{key}")
        else:
            target[key] = value


def pretrain_config(config: ml_collections.ConfigDict, method: str) -> tuple[ml_collections.ConfigDict, int]:
    """The method's recipe with the suite's overrides, then the method's own, and periodic kNN for the curve;
    and the number of examples in its training split (one epoch)."""
    from sslx import data
    from sslx.config import load_recipe
    recipe = load_recipe(REPO / config.recipe.format(method=method))
    recipe.unlock()
    merge(recipe, config.pretrain, "config.pretrain")
    if method in config.method_overrides:
        merge(recipe, config.method_overrides[method], f"config.method_overrides.{method}")
    recipe.data.path = paths.resolve_against(recipe.data.path, REPO)   # relative to the repository root
    examples = data.describe(recipe.data, recipe.data.train_split).num_examples
    recipe.eval.periodic = "knn"
    recipe.eval.every_steps = max(round(config.knn_every_epochs * examples / recipe.batch_size), 1)
    recipe.knn.ks, recipe.knn.temperature = tuple(config.eval.knn.ks), config.eval.knn.temperature
    return recipe, examples


def eval_config(config: ml_collections.ConfigDict, pretrained: str, baseline: str = "",
                features_dir: str = "") -> ml_collections.ConfigDict:
    """The suite's kNN / linear-eval config (config.eval) for one encoder or baseline."""
    evaluation = config.eval.copy_and_resolve_references()
    evaluation.pretrained, evaluation.baseline, evaluation.features_dir = pretrained, baseline, features_dir
    return evaluation


def run_stage(run: Callable[[ml_collections.ConfigDict, str], dict], stage_config: ml_collections.ConfigDict,
              workdir: epath.Path) -> dict[str, Any]:
    from sslx import workdir as workdir_lib
    return workdir_lib.run_unless_finished(run, stage_config, workdir, "reproduce")


def evaluate(config: ml_collections.ConfigDict, pretrained: epath.Path, out: epath.Path,
             baseline: str = "") -> dict[str, dict]:
    """kNN and linear eval of the encoder in `pretrained` (or of a baseline built from its config); the two
    stages extract each split's features once (under out/features, removed once both have finished)."""
    from jax.experimental import multihost_utils

    from sslx import metrics
    from sslx.stages.knn import run_knn
    from sslx.stages.linear_eval import run_linear_eval
    runs = {"knn": run_knn, "linear": run_linear_eval}
    features = out / "features"
    evaluations = {kind: run_stage(runs[kind], eval_config(config, str(pretrained), baseline, str(features)),
                                   out / kind) for kind in EVALS}
    multihost_utils.sync_global_devices(f"read {features}")   # no process still reads them
    if metrics.is_chief() and features.exists():
        features.rmtree()
    return evaluations


def method_row(method: str, recipe: ml_collections.ConfigDict, epochs: float, pretrain: dict,
               evaluations: dict[str, dict], anchors: ml_collections.ConfigDict) -> dict[str, Any]:
    images = pretrain["step"] * pretrain["batch_size"]
    seconds = pretrain["train_seconds"] + sum(e["seconds"] for e in evaluations.values())
    return {"method": method, "backbone": backbone_name(recipe), "epochs": round(epochs, 2),
            "batch": pretrain["batch_size"], "knn_top1": evaluations["knn"]["top1"],
            "linear_top1": evaluations["linear"]["top1"], "wall_seconds": round(seconds, 1),
            "pretrain_seconds": pretrain["train_seconds"],
            "img_per_s": round(images / max(pretrain["train_seconds"], 1e-9), 1),
            "device_kind": pretrain["provenance"]["device_kind"],
            "device_count": pretrain["provenance"]["device_count"],
            "anchor": anchors[method].to_dict() if method in anchors else None}


def backbone_name(recipe: ml_collections.ConfigDict) -> str:
    stem = " CIFAR stem" if recipe.model.get("cifar_stem") else ""
    return f"{recipe.model.name} {recipe.model.width:g}x{stem}, {recipe.data.image_size} px"


def baseline_row(name: str, evaluations: dict[str, dict], reference: dict[str, Any]) -> dict[str, Any]:
    return {"method": name, "backbone": reference["backbone"] if name == "random init" else "none",
            "epochs": None, "batch": None, "knn_top1": evaluations["knn"]["top1"],
            "linear_top1": evaluations["linear"]["top1"],
            "wall_seconds": round(sum(e["seconds"] for e in evaluations.values()), 1), "pretrain_seconds": 0.0,
            "img_per_s": None, "device_kind": reference["device_kind"], "device_count": reference["device_count"],
            "anchor": None}


def knn_series(pretrain_dir: epath.Path, knn_key: str, final: tuple[float, float],
               epochs_per_step: float) -> tuple[list[float], list[float]]:
    """(epochs, kNN top-1) of the periodic kNN during pretraining, ending with the kNN stage's score."""
    from sslx import plots
    records = plots.read_metrics(pretrain_dir)
    points = {int(r["step"]): r[knn_key] for r in records if r.get(knn_key) is not None}
    points = {step * epochs_per_step: value for step, value in sorted(points.items())}
    points[final[0]] = final[1]
    return list(points), list(points.values())


def checks(rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which methods beat both baselines, and how many, per evaluation."""
    found = {}
    for kind in EVALS:
        best = max(row[f"{kind}_top1"] for row in baseline_rows)
        beats = {row["method"]: row[f"{kind}_top1"] > best for row in rows}
        found |= {f"best_baseline_{kind}": best, f"beats_baselines_{kind}": beats,
                  f"methods_beating_baselines_{kind}": sum(beats.values())}
    return found


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _minutes(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} m {seconds:02d} s"


def markdown(suite: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [f"Suite `{suite}`: kNN (k {summary['knn_k']}, T {summary['knn_temperature']:g}) and linear eval "
             f"({summary['linear_mode']}) top-1 (%) on {summary['dataset']} {summary['eval_split']}.", "",
             "| method | backbone | epochs | batch | kNN top-1 | linear top-1 | wall time | img/s | device | "
             "published (kNN / linear) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        anchor = row["anchor"]
        published = "-" if not anchor else (f"{_points(anchor.get('knn'))} / {_points(anchor.get('linear'))} "
                                            f"({anchor['source']})")
        epochs = "-" if row["epochs"] is None else f"{row['epochs']:g}"
        lines.append(f"| {row['method']} | {row['backbone']} | {epochs} | {row['batch'] or '-'} | "
                     f"{_points(row['knn_top1'])} | {_points(row['linear_top1'])} | "
                     f"{_minutes(row['wall_seconds'])} | {row['img_per_s'] or '-'} | "
                     f"{row['device_count']}x {row['device_kind']} | {published} |")
    budget = ("" if summary["within_budget"] is None else f" (budget {summary['budget_minutes']:g} min: "
              f"{'within' if summary['within_budget'] else 'OVER'})")
    lines += ["", f"Total wall time of the stages {_minutes(summary['wall_seconds'])}{budget}.",
              f"Methods beating both baselines on kNN: {summary['methods_beating_baselines_knn']}/"
              f"{summary['methods']}; on linear eval: {summary['methods_beating_baselines_linear']}/"
              f"{summary['methods']}."]
    return "\n".join(lines) + "\n"


def write_suite_files(root: epath.Path, table: str, results: dict[str, Any], curve) -> None:
    from sslx import metrics, plots
    (root / "results.md").write_text(table, encoding="utf-8")
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plots.write_png(curve, root / "knn_curve.png")
    metrics.log(f"reproduce: wrote {root / 'results.md'}, results.json and knn_curve.png")


def run_suite(config: ml_collections.ConfigDict, root: str) -> dict[str, Any]:
    """Runs (or resumes) the suite under `root` (local or gs://); returns and writes the results."""
    from sslx import metrics, plots
    from sslx.stages.pretrain import run_pretraining
    root = paths.absolute(root)
    methods = methods_of(config)
    recipes = {method: pretrain_config(config, method) for method in methods}   # every config error up front
    rows, curves = [], {}
    for method in methods:
        pretrain_dir = root / method / "pretrain"
        pretrain = run_stage(run_pretraining, recipes[method][0], pretrain_dir)
        evaluations = evaluate(config, pretrain_dir, root / method)
        recipe, examples = recipes[method]
        epochs_per_step = recipe.batch_size / examples
        rows.append(method_row(method, recipe, pretrain["step"] * epochs_per_step, pretrain, evaluations,
                               config.anchors))
        knn_key = f"knn_k{config.eval.knn.ks[0]}_top1"
        curves[method] = knn_series(pretrain_dir, knn_key, (rows[-1]["epochs"], rows[-1]["knn_top1"]),
                                    epochs_per_step)
    reference = rows[0]
    baseline_rows = [baseline_row(name, evaluate(config, root / methods[0] / "pretrain",
                                                 root / "baselines" / kind, kind), reference)
                     for kind, name in BASELINES]
    first = recipes[methods[0]][0]
    summary = {"suite": config.suite, "dataset": first.data.name, "eval_split": first.data.eval_split, "knn_k": config.eval.knn.ks[0],
               "knn_temperature": config.eval.knn.temperature, "linear_mode": config.eval.linear.mode,
               "methods": len(rows),
               "wall_seconds": sum(row["wall_seconds"] for row in rows + baseline_rows),
               "budget_minutes": config.budget_minutes, **checks(rows, baseline_rows)}
    summary["within_budget"] = (summary["wall_seconds"] <= 60 * config.budget_minutes
                                if config.budget_minutes > 0 else None)
    table = markdown(config.suite, rows + baseline_rows, summary)
    if metrics.is_chief():   # every process ran the stages; one writes the suite's files
        write_suite_files(root, table, {**summary, "rows": rows + baseline_rows},
                          plots.knn_curve(curves, {row["method"]: row["knn_top1"] for row in baseline_rows},
                                          f"{config.suite}: kNN top-1 (k {config.eval.knn.ks[0]}) during "
                                          f"pretraining"))
    print(table, flush=True)
    return {**summary, "rows": rows + baseline_rows}


def main() -> None:
    from sslx import cli
    cli.run_program("reproduce", lambda: run_suite)


if __name__ == "__main__":
    main()
