"""Pictures: curves from metrics.jsonl (one run, several compared), the embedding map, the augmentation preview."""
import json
import sys

import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from sslx import cli, plots
from sslx.config import load_recipe
from test_pretrain import REPO

plots_save = plots.save


def png_shape(path):
    return tuple(tf.io.decode_png(path.read_bytes()).shape)


def tensorboard_tags(workdir):
    return {value.tag for events in (workdir / "tb").glob("events*")
            for event in tf.compat.v1.train.summary_iterator(str(events)) for value in event.summary.value}


def write_run(workdir, scale, steps=40):
    """A metrics.jsonl as pretraining writes it: training scalars every 5 steps, kNN every 20, a resumed tail
    that re-logs step 40, and the end-of-run probe."""
    workdir.mkdir(parents=True)
    lines = [{"step": s, "loss": scale * 5 / s, "learning_rate": min(s, 10) / 10, "contrastive_acc": s / steps,
              "probe_top1": 0.1 + s / 100} for s in range(5, steps + 1, 5)]
    lines += [{"step": s, "knn_k20_top1": s / 50, "knn_k200_top1": s / 60} for s in (20, steps)]
    lines += [{"step": steps, "loss": scale, "learning_rate": 0.0}, {"step": steps, "linear_probe_top1": 0.7,
                                                                    "random_init_linear_probe_top1": 0.3}]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_curves_of_one_run_and_a_comparison(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "simclr", 1.0)
    write_run(tmp_path / "byol", 2.0)
    records = plots.read_metrics(tmp_path / "simclr")
    steps, loss = plots._series(records, "loss")
    assert steps[-1] == 40 and loss[-1] == 1.0  # the re-logged step: the last value wins
    figure = plots.curves({"simclr": records})
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == [title for title, _ in plots.PANELS]
    knn_panel = figure.axes[titles.index("kNN top-1")]
    assert sorted(line.get_label() for line in knn_panel.get_lines()) == ["knn_k200_top1", "knn_k20_top1"]

    monkeypatch.setattr(sys, "argv", ["sslx-plot", str(tmp_path / "simclr")])
    cli.plot()
    assert png_shape(tmp_path / "simclr" / "plots" / "curves.png")[2] in (3, 4)
    assert "plots/curves" in tensorboard_tags(tmp_path / "simclr")
    monkeypatch.setattr(sys, "argv", ["sslx-plot", str(tmp_path / "simclr"), str(tmp_path / "byol"),
                                      "--out", str(tmp_path / "both.png")])
    cli.plot()
    assert (tmp_path / "both.png").exists() and "wrote" in capsys.readouterr().out
    legend = plots.curves({"simclr": records, "byol": plots.read_metrics(tmp_path / "byol")}).axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["simclr", "byol"]


def test_plot_of_a_directory_without_metrics_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sslx-plot", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.plot()
    assert exit_info.value.code == 2 and "no metrics.jsonl in" in capsys.readouterr().err


def test_embedding_map_is_capped_and_coloured_by_class(tmp_path, monkeypatch):
    digits = load_digits()
    features, labels = digits.data[:400], digits.target[:400]
    figures = []
    monkeypatch.setattr(plots, "save", lambda figure, *args, **kwargs: figures.append(figure) or
                        plots_save(figure, *args, **kwargs))
    path = plots.write_embedding_map(tmp_path, features, labels, "digits pixels", step=3, max_points=120,
                                     class_names=[f"digit {d}" for d in range(10)])
    assert path == tmp_path / "plots" / "embedding_map.png" and png_shape(path)[:2] == (600, 750)
    assert "plots/embedding_map" in tensorboard_tags(tmp_path)
    ax = figures[0].axes[0]
    assert "t-SNE of 120 eval-set embeddings" in ax.get_title() or "UMAP of 120" in ax.get_title()
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [f"digit {d}" for d in range(10)]
    assert len(ax.collections[0].get_offsets()) == 120
    assert plots.write_embedding_map(tmp_path, features, labels, "off", max_points=0) is None


def test_preview_draws_training_images_and_their_views(tmp_path, monkeypatch):
    config = load_recipe(REPO / "configs" / "quickstart.py")
    figure = plots.augmentation_preview(config, num_images=3)
    assert [ax.get_title() for ax in figure.axes[:3]] == ["image", "view 1", "view 2"]
    rows = [figure.axes[3 * r].get_ylabel() for r in range(3)]
    assert all(row in {str(d) for d in range(10)} for row in rows)  # the digit each row shows
    shown = figure.axes[1].get_images()[0].get_array()
    assert shown.shape == (8, 8, 3) and 0.0 <= shown.min() and shown.max() <= 1.0
    out = tmp_path / "preview" / "digits.png"
    monkeypatch.setattr(sys, "argv", ["sslx-preview", "--config", str(REPO / "configs" / "quickstart.py"),
                                      "--out", str(out), "--config.augment.flip_prob=0.5"])
    cli.preview()
    assert png_shape(out)[0] > 500
