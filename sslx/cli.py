"""Console entry points: parse `--config FILE --workdir DIR [--config.key=value ...]`, run one stage.

Every user error ends as one line on stderr naming the problem and the fix, with exit code 2.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TF >= 2.20 announces oneDNN on stderr before its log level applies; TF only feeds input, so keep its plain kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Bad flags, a bad recipe file or unknown override keys.
PARSE_ERRORS = (ValueError, TypeError, OSError, flags.Error)
# Raised by stages for bad config values, missing data or checkpoints, and a non-finite loss.
RUN_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _fail(program: str, error: BaseException, leave: Callable[[int], None] = sys.exit) -> None:
    print(f"{program}: error: {_one_line(error)}", file=sys.stderr, flush=True)
    leave(2)


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_key_message(error: Exception, argv: list[str]) -> str:
    key = str(error.args[0]).strip("'\"") if error.args else "?"
    flag = next((a for a in argv if a.startswith("--config.") and key in a.split("=", 1)[0]), key)
    return (f"unknown config key {key!r} (from {flag}): the recipe has no such key; "
            f"see sslx/config.py and the recipe file for the valid keys")


def _parse(program: str, argv: list[str], out_flag: str = "workdir",
           out_help: str = "the directory for checkpoints and results.json"):
    """Parses `--config` (executed, overrides applied, locked: no new keys) and the required `--<out_flag>`."""
    path = _config_path(argv)
    if path is None:
        _fail(program, ValueError("--config is required: pass a recipe such as --config configs/quickstart.py"))
    if not os.path.isfile(path.split(":", 1)[0]):
        _fail(program, FileNotFoundError(f"config file {path} not found: pass a recipe file from configs/"))
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py) returning a ConfigDict.",
                                    flag_values=flag_values, lock_config=True)
    flags.DEFINE_string(out_flag, None, out_help, flag_values=flag_values)
    try:
        flag_values(argv)
        config = flag_values.config
        config.to_dict()  # the recipe loads lazily: surface its errors here
        if not flag_values[out_flag].value:
            raise ValueError(f"--{out_flag} is required: pass {out_help}")
    except (KeyError, AttributeError) as error:  # how ml_collections reports a key the recipe lacks
        _fail(program, ValueError(_unknown_key_message(error, argv)))
    except PARSE_ERRORS as error:
        _fail(program, error)
    except Exception as error:  # noqa: BLE001 - the recipe's own code failed: show where in the recipe
        _recipe_failed(program, path.split(":", 1)[0], error)
    return config, flag_values[out_flag].value


def _recipe_failed(program: str, recipe: str, error: Exception) -> None:
    """A recipe that does not compile or raises: its own frames and the error, without sslx's and absl's."""
    recipe = os.path.realpath(recipe)
    if isinstance(error, SyntaxError) and error.filename and os.path.realpath(error.filename) == recipe:
        where = [f'  File "{error.filename}", line {error.lineno}\n    {(error.text or "").strip()}\n']
    else:
        where = traceback.format_list([frame for frame in traceback.extract_tb(error.__traceback__)
                                       if os.path.realpath(frame.filename) == recipe])
    print(f"{program}: error: the recipe {recipe} failed to load ({type(error).__name__}: {_one_line(error)}); "
          f"in the recipe:", file=sys.stderr)
    print("".join(where).rstrip(), file=sys.stderr, flush=True)
    sys.exit(2)


def _run_stage(program: str, stage: Callable) -> None:
    logging.set_verbosity(logging.WARNING)
    config, workdir = _parse(program, sys.argv)
    from sslx import metrics, parallel  # imports jax, which starts no backend until a device is touched
    from sslx.workdir import Preempted
    try:
        # Before anything touches devices: afterwards jax.devices() spans every process of the run.
        parallel.initialize_distributed(config.distributed)
        parallel.check_same_config(config)
        stage(config, workdir)
    except Preempted as stopped:  # a checkpoint of the last step is committed: a clean, resumable exit
        metrics.log(str(stopped))
    except (*RUN_ERRORS, parallel.DistributedError) as error:
        _fail(program, error, leave=parallel.exit_now)


def pretrain() -> None:
    from sslx.stages.pretrain import run_pretraining
    _run_stage("sslx-pretrain", run_pretraining)


def benchmark() -> None:
    from sslx.benchmark import main
    main()


def linear_eval() -> None:
    from sslx.stages.linear_eval import run_linear_eval
    _run_stage("sslx-linear-eval", run_linear_eval)


def knn() -> None:
    from sslx.stages.knn import run_knn
    _run_stage("sslx-knn", run_knn)


def finetune() -> None:
    from sslx.stages.finetune import run_finetune
    _run_stage("sslx-finetune", run_finetune)


def distill() -> None:
    from sslx.stages.distill import run_distill
    _run_stage("sslx-distill", run_distill)


def make_tfrecords() -> None:
    from sslx.data.make_tfrecords import main
    try:
        main(sys.argv[1:])
    except (*RUN_ERRORS, FileExistsError) as error:
        _fail("sslx-make-tfrecords", error)


def preview() -> None:
    """`sslx-preview --config C --out FILE.png [--config.key=value ...]`: the augmentation preview, no training."""
    logging.set_verbosity(logging.WARNING)
    config, out = _parse("sslx-preview", sys.argv, "out", "the PNG file to write")
    from sslx import config as config_lib, plots
    try:
        config_lib.validate_data(config.data)
        figure = plots.augmentation_preview(config, seed=int(config.seed))
    except RUN_ERRORS as error:
        _fail("sslx-preview", error)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figure.savefig(out)
    print(f"wrote {out}")


def plot() -> None:
    from sslx.plots import plot_main
    try:
        plot_main(sys.argv[1:])
    except RUN_ERRORS as error:
        _fail("sslx-plot", error)
def _run_tool(program: str, main: Callable[[list[str]], None]) -> None:
    """A tool with its own argparse flags (embed, export, import): its user errors become one line."""
    logging.set_verbosity(logging.WARNING)
    try:
        main(sys.argv[1:])
    except RUN_ERRORS as error:
        _fail(program, error)


def embed() -> None:
    from sslx.encoder import main
    _run_tool("sslx-embed", main)


def export() -> None:
    from sslx.export import main
    _run_tool("sslx-export", main)


def import_simclr() -> None:
    from sslx.import_simclr import main
    _run_tool("sslx-import-simclr", main)
