"""`sslx-knn`: weighted kNN top-1/top-5 of a pretrained encoder's frozen features (no training at all)."""
from __future__ import annotations

import time
from typing import Any

import ml_collections

from sslx import data, metrics, parallel, paths, plots
from sslx import workdir as workdir_lib
from sslx.evaluators import baselines, common
from sslx.evaluators.encoders import check_head_layer, load_pretrained
from sslx.evaluators.knn import KnnEvaluator, check_knn_config


def validate(config: ml_collections.ConfigDict) -> None:
    if not config.pretrained:
        raise ValueError("config.pretrained is required: pass --config.pretrained=PRETRAIN_WORKDIR")
    check_knn_config(config.knn)
    baselines.check_baseline(config)


def run_knn(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The `sslx-knn` stage; top1/top5 in results.json are those of the first k in config.knn.ks."""
    validate(config)
    started = time.perf_counter()
    workdir_lib.check_writable(workdir)  # before the features: a bad --workdir costs nothing
    mesh = parallel.make_mesh()
    pretrained = load_pretrained(config.pretrained, config.step, mesh)
    check_head_layer(pretrained.config, config.head_layer, "config.head_layer")
    data_cfg = common.data_config(config, pretrained.config)
    info = common.check_labelled(data_cfg, data_cfg.train_split)
    title = common.features_title(config, pretrained)
    metrics.log(f"kNN (k {tuple(config.knn.ks)}, T {config.knn.temperature}) of {title} ({pretrained.workdir}) on "
                f"{data_cfg.name}")
    apply, variables = baselines.frozen_features(config, pretrained, mesh)
    evaluator = KnnEvaluator(config.knn, data_cfg, mesh, config.eval_batch_size, info.num_classes)
    fn = lambda images: apply(variables, images)  # noqa: E731
    digest = common.variables_digest(variables) if config.features_dir else ""
    train = common.stage_features(fn, digest, config, pretrained, data_cfg, data_cfg.train_split, mesh,
                                  config.knn.train_examples)
    test = common.stage_features(fn, digest, config, pretrained, data_cfg, data_cfg.eval_split, mesh)
    scores = evaluator.score(train, test)
    plots.write_embedding_map(workdir, *test, title, step=pretrained.step, max_points=config.embedding_map_points,
                              class_names=data.class_names(data_cfg, data_cfg.eval_split))
    first = config.knn.ks[0]
    results = common.base_results("knn", pretrained, data_cfg.eval_split, len(train[1]), config.baseline)
    results.update(scores, top1=scores[f"k{first}_top1"], top5=scores[f"k{first}_top5"], k=first,
                   temperature=config.knn.temperature)
    return common.finish(paths.as_path(workdir), results, started)
