"""sslx-benchmark's recipe figures: a recipe file's own train step, timed over the mesh and written out."""
import json
import pathlib

import pytest

from sslx import benchmark

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"


def test_a_recipe_step_is_timed_and_written(tmp_path):
    out = tmp_path / "bench.json"
    benchmark.main(["--skip-input", "--models", "", "--recipes", f"{QUICKSTART}:16", "--steps", "1",
                    "--json", str(out)])
    (figures,) = json.loads(out.read_text())["train_step"]
    assert (figures["method"], figures["model"], figures["global_batch"], figures["image_size"],
            figures["devices"], figures["dtype"]) == ("simclr", "resnet18", 16, 8, 8, "float32")
    assert figures["sslx_img_per_s"] > 0


def test_a_missing_recipe_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"recipe .*nope\.py not found.*--recipes"):
        benchmark.main(["--skip-input", "--models", "", "--recipes", f"{tmp_path / 'nope.py'}:16"])
