"""The SimCLRv2 recipe end to end, in this process: every stage reads the previous stage's workdir under ROOT.

    python launch/simclrv2_recipe.py --config configs/simclrv2_recipe_cifar10.py --workdir ROOT [--config.key=value]

pretrain (3-layer head) -> linear eval (fast) -> for each label fraction: fine-tune from the first head layer ->
self-distil (the student starts from ROOT/pretrain's encoder when config.self_distill_from_pretrained) -> distil
into the smaller student; a distillation's labelled loss (supervised_weight > 0) reads the fine-tune's labels.
A stage whose workdir already has results.json is skipped and the stages resume from their checkpoints, so
rerunning the command continues an interrupted recipe. The table (stage, model, labels used, top-1) is printed
and written to ROOT/summary.json and ROOT/summary.md.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import ml_collections
from etils import epath

from sslx import paths

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str                                  # its workdir under ROOT
    labels: str                                # the labels that reached this model, for the table
    run: Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
    config: ml_collections.ConfigDict


def copy_section(section: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
    copied = ml_collections.ConfigDict(section.to_dict())
    for key, value in values.items():
        copied[key] = value
    return copied


def fraction_tag(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def plan(config: ml_collections.ConfigDict, root: epath.Path) -> list[Stage]:
    """The stages in order, each config pointing at the workdir of the stage it builds on."""
    from sslx.stages.distill import run_distill
    from sslx.stages.finetune import run_finetune
    from sslx.stages.linear_eval import run_linear_eval
    from sslx.stages.pretrain import run_pretraining

    pretrained = str(root / "pretrain")
    stages = [Stage("pretrain", "none", run_pretraining, config.pretrain),
              Stage("linear_eval", "100%", run_linear_eval, copy_section(config.linear_eval, pretrained=pretrained))]
    epochs = config.get("finetune_epochs") or (-1.0,) * len(config.label_fractions)
    if len(epochs) != len(config.label_fractions):
        raise ValueError(f"config.finetune_epochs={tuple(epochs)} needs one entry per label fraction "
                         f"{tuple(config.label_fractions)} (-1: the SimCLRv2 default for that fraction)")
    for fraction, fraction_epochs in zip(config.label_fractions, epochs):
        tag, labels = fraction_tag(fraction), f"{fraction * 100:g}%"
        tuned = copy_section(config.finetune, pretrained=pretrained)
        tuned.finetune.label_fraction = fraction
        tuned.finetune.epochs = float(fraction_epochs)
        self_distill = distill_section(config.self_distill, root / f"finetune_{tag}", tuned.finetune)
        if config.get("self_distill_from_pretrained", False):
            self_distill.student.pretrained = pretrained
        stages += [Stage(f"finetune_{tag}", labels, run_finetune, tuned),
                   Stage(f"self_distill_{tag}", labels, run_distill, self_distill),
                   Stage(f"distill_{tag}", labels, run_distill,
                         distill_section(config.distill, root / f"self_distill_{tag}", tuned.finetune))]
    return stages


def distill_section(section: ml_collections.ConfigDict, teacher: epath.Path,
                    labels: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A distillation stage's config: its teacher, and for its labelled loss (supervised_weight > 0) the labelled
    subset the fine-tune used (`labels`: that stage's finetune section)."""
    distilled = copy_section(section, teacher=str(teacher))
    distilled.distill.label_fraction, distilled.distill.subset_seed = labels.label_fraction, labels.subset_seed
    return distilled


def run_stage(stage: Stage, root: epath.Path) -> dict[str, Any]:
    from sslx import workdir as workdir_lib
    return workdir_lib.run_unless_finished(stage.run, stage.config, root / stage.name, "recipe")


def model_name(workdir: epath.Path) -> str:
    model = json.loads((workdir / "config.json").read_text(encoding="utf-8"))["model"]
    extra = "+SK" if model.get("sk_ratio", 0) > 0 else ""
    return f"{model['name']} {model['width']:g}x{extra}"


def summary_rows(stages: list[Stage], results: dict[str, dict], root: epath.Path) -> list[dict[str, Any]]:
    """One row per trained model; pretraining is scored by its linear evaluation."""
    by_name = {stage.name: stage for stage in stages}
    rows = []
    for stage in stages:
        if stage.name == "linear_eval":
            continue
        scorer = by_name["linear_eval"] if stage.name == "pretrain" else stage
        name = "pretrain (linear eval)" if stage.name == "pretrain" else stage.name
        rows.append({"stage": name, "model": model_name(root / stage.name), "labels": scorer.labels,
                     "top1": results[scorer.name]["top1"], "workdir": str(root / stage.name)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | model | labels | top-1 |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['model']} | {r['labels']} | {100 * r['top1']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def run_recipe(config: ml_collections.ConfigDict, root: str) -> list[dict[str, Any]]:
    """Runs (or resumes) every stage under `root` (local or gs://); returns the summary rows and writes summary.json/.md."""
    root = paths.absolute(root)   # a local folder or gs://BUCKET/DIR
    # A relative data path is relative to the repository root, wherever the command runs.
    config.pretrain.data.path = paths.resolve_against(config.pretrain.data.path, REPO)
    stages = plan(config, root)
    results = {stage.name: run_stage(stage, root) for stage in stages}
    rows = summary_rows(stages, results, root)
    table = markdown(rows)
    (root / "summary.json").write_text(json.dumps({"stages": rows}, indent=2) + "\n", encoding="utf-8")
    (root / "summary.md").write_text(table, encoding="utf-8")
    print(table, flush=True)
    return rows


def main() -> None:
    from sslx import cli
    cli.run_program("simclrv2_recipe", lambda: run_recipe)


if __name__ == "__main__":
    main()
