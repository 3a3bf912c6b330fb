"""Console entry points: parse `--config FILE --workdir DIR [--config.key=value ...]`, run one stage.

Every user error ends as one line on stderr naming the problem and the fix, with exit code 2.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Bad flags, a bad recipe file or unknown override keys.
PARSE_ERRORS = (ValueError, KeyError, AttributeError, TypeError, OSError, flags.Error)
# Raised by stages for bad config values, missing data or checkpoints, and a non-finite loss.
RUN_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split()) or type(error).__name__


def _fail(program: str, error: BaseException) -> None:
    print(f"{program}: error: {_one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(2)


def _parse(program: str, argv: list[str]):
    """Parses the stage flags; the config file is executed and overrides applied (locked: no new keys)."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py) returning a ConfigDict.",
                                    flag_values=flag_values, lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.",
                        flag_values=flag_values)
    try:
        flag_values(argv)
        if flag_values.config is None:
            raise ValueError("--config is required: pass a recipe such as --config configs/quickstart.py")
        if not flag_values.workdir:
            raise ValueError("--workdir is required: pass the directory for checkpoints and results.json")
    except PARSE_ERRORS as error:
        _fail(program, error)
    return flag_values.config, flag_values.workdir


def _run_stage(program: str, stage: Callable) -> None:
    logging.set_verbosity(logging.WARNING)
    config, workdir = _parse(program, sys.argv)
    try:
        stage(config, workdir)
    except RUN_ERRORS as error:
        _fail(program, error)


def pretrain() -> None:
    from sslx.stages.pretrain import run_pretraining
    _run_stage("sslx-pretrain", run_pretraining)
