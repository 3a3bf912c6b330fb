"""Pictures of a run, as PNG files in `<workdir>/plots/` and TensorBoard images (`plots/<name>`).

- augmentation preview: a few training images next to their two views, written when pretraining starts
  (`sslx-preview --config C --out FILE` draws it without training);
- curves: loss, learning rate, contrastive accuracy, online probe, kNN and linear probe against step, read from
  metrics.jsonl, at the end of pretraining (`sslx-plot W [W2 ...]` draws and compares any workdirs);
- embedding map: a 2-D t-SNE (UMAP where `umap-learn` is installed) of eval-set features coloured by label,
  written by the kNN and linear-eval stages.
Figures are built with matplotlib's object API on the Agg canvas: no pyplot state, no display needed.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from etils import epath
from matplotlib.figure import Figure

from sslx import metrics, paths

PLOTS_DIR = "plots"
# (panel title, keys of metrics.jsonl drawn in it); keys given as a pattern match any run's matching keys.
PANELS = (
    ("loss", ("loss",)),
    ("learning rate", ("learning_rate",)),
    ("contrastive accuracy", ("contrastive_acc",)),
    ("online probe top-1", ("probe_top1",)),
    ("kNN top-1", (re.compile(r"knn_k\d+_top1"),)),
    ("linear probe top-1", ("linear_probe_top1", "random_init_linear_probe_top1")),
)
# t-SNE's cost grows as N log N: 4.6 CPU-seconds at 1000 points, 9.7 at 2000 (50 PCA dims, one thread).
EMBEDDING_POINTS = 1000
_PCA_DIMS = 50           # t-SNE on 50 principal components, the usual preprocessing (van der Maaten 2014)


def save(figure: Figure, workdir: paths.PathLike, name: str, step: int = 0,
         writer: metrics.MetricWriter | None = None) -> epath.Path:
    """Writes `<workdir>/plots/<name>.png` and the TensorBoard image `plots/<name>` at `step` (process 0 only)."""
    path = paths.as_path(workdir) / PLOTS_DIR / f"{name}.png"
    if not metrics.is_chief():
        return path
    canvas = write_png(figure, path)
    own_writer = writer is None
    writer = writer or metrics.MetricWriter(workdir)
    writer.image(step, f"{PLOTS_DIR}/{name}", np.asarray(canvas.buffer_rgba())[..., :3])
    if own_writer:
        writer.close()
    return path


def write_png(figure: Figure, path: paths.PathLike) -> FigureCanvasAgg:
    """Draws `figure` into the PNG file `path` (a local path or gs://); returns the drawn canvas."""
    path = paths.as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    with path.open("wb") as f:   # a local folder or a bucket
        figure.savefig(f, format="png", dpi=figure.dpi)
    return canvas


# --- augmentation preview -------------------------------------------------------------------------------------

def augmentation_preview(config: Any, num_images: int = 8, seed: int = 0) -> Figure:
    """The first `num_images` of a shuffled training batch and the views pretraining makes of each (two, or every
    crop of config.augment.crops).

    Views come from the run's own augmentation (config.augment, drawn with the tf.data implementation, which
    config.augment.on_device mirrors on the accelerator) on the decoded batch. Variable-size images are
    shown as the square the on-device path crops from (a random square of the shorter side); the host path
    crops from the whole image instead.
    """
    import ml_collections
    import tensorflow as tf

    from sslx import data
    from sslx.config import view_sizes
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.shuffle_buffer, data_cfg.cache = 16 * num_images, False  # a sample, not a full buffer
    specs = data.spec_from_config(config.augment)
    size = config.data.image_size
    sizes = view_sizes(config.augment, size)
    batch = next(data.pretrain_iterator(data_cfg, specs, local_batch=num_images, image_size=size, seed=seed,
                                        on_device=True, host_size=config.augment.get("host_size", 0)))
    views = data.augment_views(tf.constant(batch["image"]), specs, tf.constant([seed, 0], tf.int64), sizes)
    columns = {"image": batch["image"], **{f"view {i + 1}": view.numpy() for i, view in enumerate(views)}}
    names = data.class_names(data_cfg, data_cfg.get("train_split", "train"))
    shown = " + ".join(f"{sizes.count(side)}x{side}" for side in dict.fromkeys(sizes))
    return image_grid(columns, batch["label"], f"{config.get('method', '')} augmentation "
                      f"(preset {config.augment.get('preset', '')!r}), {shown} px views", names)


def _label_name(label: int, class_names: Sequence[str]) -> str:
    if label < 0:
        return "unlabelled"
    return class_names[label] if label < len(class_names) else str(label)


def image_grid(columns: Mapping[str, np.ndarray], labels: Sequence[int], title: str,
               class_names: Sequence[str] = ()) -> Figure:
    """One row per example (named by its label), one column per entry of `columns` (uint8 or [0, 1] images)."""
    rows = len(labels)
    figure = Figure(figsize=(1.6 * len(columns), 1.6 * rows + 0.4), dpi=100, layout="constrained")
    axes = figure.subplots(rows, len(columns), squeeze=False)
    for col, (name, images) in enumerate(columns.items()):
        for row in range(rows):
            image = images[row]
            image = image if image.dtype == np.uint8 else np.clip(image, 0.0, 1.0)
            axes[row, col].imshow(image, interpolation="nearest")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(name, fontsize=9)
    for row in range(rows):
        axes[row, 0].set_ylabel(_label_name(int(labels[row]), class_names), fontsize=8)
    figure.suptitle(title, fontsize=10)
    return figure


def write_augmentation_preview(config: Any, workdir: paths.PathLike,
                               writer: metrics.MetricWriter | None = None) -> epath.Path | None:
    """`<workdir>/plots/augmentation_preview.png` (and TensorBoard at step 0), from process 0."""
    if not metrics.is_chief():
        return None
    return save(augmentation_preview(config, seed=int(config.seed)), workdir, "augmentation_preview", 0, writer)


# --- curves ---------------------------------------------------------------------------------------------------

def read_metrics(workdir: paths.PathLike) -> list[dict[str, float]]:
    """The records of `<workdir>/metrics.jsonl`, in the order they were written."""
    path = paths.as_path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {workdir}: pass a workdir written by an sslx stage")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _series(records: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key`; a resumed run re-logs some steps, the last value of each wins."""
    points = {int(r["step"]): r[key] for r in records if r.get(key) is not None}
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps], dtype=float)


def _panel_keys(keys: Sequence[Any], available: set[str]) -> list[str]:
    found = []
    for key in keys:
        found += sorted((k for k in available if key.fullmatch(k)), key=_natural) \
            if isinstance(key, re.Pattern) else [key] if key in available else []
    return found


def _natural(key: str) -> list:
    """Sort key that puts knn_k20 before knn_k200."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def curves(runs: Mapping[str, list[dict[str, float]]]) -> Figure:
    """One panel per metric group that any run logged, every run's curves overlaid (labelled by run name)."""
    available = {key for records in runs.values() for record in records for key in record}
    panels = [(title, _panel_keys(keys, available)) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        raise ValueError(f"no plottable metrics in {', '.join(runs)} (looked for loss, learning_rate, ...)")
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows), dpi=100, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, panels):
        for run_index, (run, records) in enumerate(runs.items()):
            for key_index, key in enumerate(keys):
                steps, values = _series(records, key)
                if not len(steps):
                    continue
                label = " ".join(part for part in (run if len(runs) > 1 else "",
                                                   key if len(keys) > 1 else "") if part)
                # Several runs: a colour per run, a line style per key; one run: a colour per key.
                ax.plot(steps, values, color=f"C{run_index if len(runs) > 1 else key_index}",
                        linestyle=("-", "--", ":", "-.")[key_index % 4] if len(runs) > 1 else "-",
                        marker="o" if len(steps) <= 20 else None, markersize=3, label=label or None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return figure


def write_curves(workdir: paths.PathLike) -> epath.Path | None:
    """`<workdir>/plots/curves.png` (and TensorBoard) from the run's metrics.jsonl, which process 0 wrote."""
    if not metrics.is_chief():
        return None
    records = read_metrics(workdir)
    step = max((int(r["step"]) for r in records), default=0)
    return save(curves({paths.as_path(workdir).name: records}), workdir, "curves", step)


def knn_curve(runs: Mapping[str, tuple[Sequence[float], Sequence[float]]], baselines: Mapping[str, float],
              title: str) -> Figure:
    """kNN top-1 against epoch, a line per run ((epochs, top-1) each), the baselines as horizontal lines."""
    figure = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    for index, (run, (epochs, top1)) in enumerate(runs.items()):
        ax.plot(epochs, top1, color=f"C{index}", marker="o" if len(epochs) <= 30 else None, markersize=3,
                label=run)
    for index, (name, top1) in enumerate(baselines.items()):
        ax.axhline(top1, color="0.4", linestyle=("--", ":", "-.")[index % 3], linewidth=1, label=name)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("kNN top-1", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figure


# --- embedding map --------------------------------------------------------------------------------------------

def project_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of `features` [N, D] and the method's name: UMAP where installed, else t-SNE."""
    features = np.asarray(features, np.float32)
    try:
        import umap  # optional: faster and keeps more global structure than t-SNE
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(features), "UMAP"
    except ImportError:
        pass
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    if features.shape[1] > _PCA_DIMS and len(features) > _PCA_DIMS:
        features = PCA(_PCA_DIMS, random_state=seed).fit_transform(features)
    perplexity = min(30.0, (len(features) - 1) / 3)  # sklearn needs perplexity < N
    return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features), "t-SNE"


def embedding_map(features: np.ndarray, labels: np.ndarray, title: str, *, max_points: int = EMBEDDING_POINTS,
                  class_names: Sequence[str] = (), seed: int = 0) -> Figure:
    """A 2-D projection of at most `max_points` rows of `features` (a seeded sample), coloured by label."""
    labels = np.asarray(labels)
    if len(labels) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_points, replace=False))
        features, labels = np.asarray(features)[keep], labels[keep]
    points, method = project_2d(features, seed)
    classes = np.unique(labels)
    figure = Figure(figsize=(7.5, 6.0), dpi=100, layout="constrained")
    ax = figure.subplots()
    colours = ax.scatter(points[:, 0], points[:, 1], c=np.searchsorted(classes, labels), s=6, alpha=0.8,
                         cmap="tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "viridis",
                         vmin=-0.5, vmax=len(classes) - 0.5)
    names = [_label_name(int(c), class_names) for c in classes]
    if len(classes) <= 20:
        handles = [ax.scatter([], [], color=colours.cmap(colours.norm(i)), s=12) for i in range(len(classes))]
        ax.legend(handles, names, fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        figure.colorbar(colours, ax=ax, label="class index")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}: {method} of {len(labels)} eval-set embeddings", fontsize=10)
    return figure


def write_embedding_map(workdir: paths.PathLike, features: np.ndarray, labels: np.ndarray, title: str, *,
                        step: int = 0, max_points: int = EMBEDDING_POINTS,
                        class_names: Sequence[str] = ()) -> epath.Path | None:
    """`<workdir>/plots/embedding_map.png` (and TensorBoard); nothing when max_points is 0."""
    if max_points <= 0 or not metrics.is_chief():
        return None
    figure = embedding_map(features, labels, title, max_points=max_points, class_names=class_names)
    return save(figure, workdir, "embedding_map", step)


# --- console scripts ------------------------------------------------------------------------------------------

def plot_main(argv: list[str]) -> None:
    """`sslx-plot W [W2 ...] [--out FILE]`: the curves of one workdir, or several overlaid to compare them."""
    parser = argparse.ArgumentParser(prog="sslx-plot", description=plot_main.__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="W", help="workdirs holding metrics.jsonl")
    parser.add_argument("--out", default="", help="PNG file (default: W/plots/curves.png for one workdir, "
                                                   "curves.png in the current directory for several)")
    args = parser.parse_args(argv)
    runs = {}
    for workdir in args.workdirs:
        name = paths.absolute(workdir).name
        runs[name if name not in runs else workdir] = read_metrics(workdir)
    if len(runs) == 1 and not args.out:
        print(f"wrote {write_curves(args.workdirs[0])}")
        return
    out = pathlib.Path(args.out or "curves.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    curves(runs).savefig(out)
    print(f"wrote {out}")
