"""The console scripts answer --help before JAX loads and --print_config before TF loads, and recipes resolve by
name."""
import pathlib
import re
import subprocess
import sys

import pytest

from sslx import cli
from sslx.config import load_recipe, recipe_names, resolve_recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"sslx-pretrain": "pretrain", "sslx-linear-eval": "linear_eval", "sslx-knn": "knn",
                "sslx-finetune": "finetune", "sslx-distill": "distill"}


def run_cli(program, *args, cwd=REPO):
    code = f"import sys; sys.argv[0] = {program!r}; from sslx.cli import {ENTRY_POINTS[program]}; " \
           f"{ENTRY_POINTS[program]}()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.parametrize("program", list(ENTRY_POINTS))
def test_help_lists_usage_and_the_stage_recipes(program):
    done = run_cli(program, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {program} --config RECIPE --workdir DIR")
    recipes = {"sslx-pretrain": "simclr_cifar10", "sslx-linear-eval": "linear_eval_cifar10",
               "sslx-knn": "knn_cifar10", "sslx-finetune": "finetune_cifar10", "sslx-distill": "distill_cifar10"}
    assert recipes[program] in done.stdout and "--config.KEY=VALUE" in done.stdout and "--print_config" in done.stdout
    if program != "sslx-pretrain":
        assert "simclr_cifar10," not in done.stdout   # only the stage's own recipes


def test_print_config_resolves_a_recipe_by_name_with_overrides(tmp_path):
    done = run_cli("sslx-pretrain", "--config", "simclr_cifar10", "--config.batch_size=1024", "--print_config",
                   cwd=tmp_path)   # outside the checkout: the name, not configs/, finds it
    assert done.returncode == 0, done.stderr
    assert "batch_size: 1024" in done.stdout.splitlines() and "method: simclr" in done.stdout.splitlines()
    assert run_cli("sslx-knn", "--config", "configs/knn_cifar10.py", "--print_config", cwd=tmp_path).returncode == 0


def test_help_loads_no_jax_and_print_config_no_tensorflow():
    code = ("import sys, contextlib, io; from sslx import cli\n"
            "for argv in (['p', '--help'], ['p', '--config', 'simclr_cifar10', '--print_config']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        cli._parse('sslx-pretrain', argv)\n"
            "    print('jax' in sys.modules, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.stdout.split("\n")[:2] == ["False False", "True False"], done.stderr


@pytest.mark.parametrize("program,args,expected", [
    ("sslx-pretrain", ("--config", "configs/quickstart.py", "--config.batchsize=3"),
     "sslx-pretrain: error: unknown config key 'batchsize' (--config.batchsize=3): config has no such key; "
     "did you mean config.batch_size? the keys are defined in base_config() in sslx/config.py (a method's own "
     "section: its file in sslx/methods/) and configs/quickstart.py; --print_config lists them"),
    ("sslx-distill", ("--config", "distill_cifar10", "--config.distill.temprature=2"),
     "sslx-distill: error: unknown config key 'temprature' (--config.distill.temprature=2): config.distill has no "
     "such key; did you mean config.distill.temperature? the keys are defined in distill_config() in "
     "sslx/config.py and distill_cifar10; --print_config lists them"),
    ("sslx-pretrain", ("--config", "quickstart", "--config.method=simclrr"),
     "sslx-pretrain: error: config.method='simclrr' is unknown; use one of ['barlow_twins', "),
    ("sslx-pretrain", ("--config", "quickstart", "--config.method=my_methods.nnclr:NNCLR"),
     "sslx-pretrain: error: config.method='my_methods.nnclr:NNCLR': module 'my_methods.nnclr' does not import "
     "(No module named 'my_methods'); put the folder that holds it on PYTHONPATH"),
    ("sslx-knn", ("--config", "knn_cifar11"), "recipe knn_cifar11 not found"),
    ("sslx-knn", (), "--config is required: pass a recipe such as --config knn_cifar10"),
])
def test_bad_flags_give_one_clean_line(program, args, expected):
    done = run_cli(program, *args, "--workdir", "/tmp/never-written")
    assert done.returncode == 2
    # distill recipes import the stage, so TF loads and logs its start-up lines (before absl): not ours
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and not re.match(r"(WARNING: All log messages|[IWE]\d{4} )", line)]
    assert len(lines) == 1 and expected in lines[0] and "\\" not in lines[0], done.stderr


def test_an_error_after_tensorflow_loads_is_the_only_line_on_stderr(tmp_path):
    """TF announces oneDNN on stderr while it loads, below its log level; the stages load it with that silenced."""
    done = run_cli("sslx-knn", "--config", "knn_cifar10", "--workdir", str(tmp_path / "knn"),
                   f"--config.pretrained={tmp_path / 'never-pretrained'}")
    assert done.returncode == 2
    assert done.stderr.startswith("sslx-knn: error: ") and done.stderr.count("\n") == 1, done.stderr


def test_every_shipped_recipe_loads_by_name(tmp_path, monkeypatch):
    names = recipe_names()
    assert "quickstart" in names and "__init__" not in names and len(names) == len(list(REPO.glob("configs/*.py"))) - 1
    assert resolve_recipe("configs/simclr_cifar10.py") == pathlib.Path("configs/simclr_cifar10.py")   # a path first
    monkeypatch.chdir(tmp_path)   # no configs/ here: the README's path still names the shipped recipe
    assert resolve_recipe("configs/simclr_cifar10.py") == REPO / "configs" / "simclr_cifar10.py"
    with pytest.raises(FileNotFoundError, match="recipe elsewhere/simclr_cifar10.py not found"):
        resolve_recipe("elsewhere/simclr_cifar10.py")   # a path into another folder is never swapped for ours
    for name in names:
        assert load_recipe(name) is not None


def test_every_program_has_recipes():
    for program in cli.PROGRAMS.values():
        assert cli._recipes_of(program), program.name
