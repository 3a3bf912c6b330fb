"""What the launchers share: the training command, and printing or running a list of shell commands."""
from __future__ import annotations

import argparse
import pathlib
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def stage_command(stage: str, config: str, workdir: str, overrides: list[str]) -> list[str]:
    """`sslx-<stage> --config ... --workdir ... --config.key=value ...` as argv."""
    return [f"sslx-{stage}", "--config", config, "--workdir", workdir, *overrides]


EPILOG = """The stage's own flags go after `--`: any recipe key as --config.KEY=VALUE (e.g. -- --config.epochs=100
--config.model.dtype=bfloat16). A recipe is a name (simclr_imagenet) or a file (configs/simclr_imagenet.py);
`sslx-<stage> --help` lists the recipes and says where their keys are defined. --print_config prints the
resolved config of --config with those overrides and exits, running nothing."""


def parse_with_overrides(parser: argparse.ArgumentParser,
                         argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Launcher flags before `--`; the stage's `--config.key=value` overrides after it. `--print_config` prints
    the stage's resolved config and exits."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    launcher, overrides = argv[:split], argv[split + 1:]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved config of --config with the overrides after -- and exit")
    if "--print_config" in launcher:   # before the launcher's own required flags are asked for
        known, _ = argparse.ArgumentParser(add_help=False, parents=[_stage_flags(parser)]).parse_known_args(launcher)
        print_config(known.stage, known.config, overrides)
    return parser.parse_args(launcher), overrides


def _stage_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--stage", default=parser.get_default("stage"))
    flags.add_argument("--config", default=parser.get_default("config"))
    return flags


def print_config(stage: str, config: str, overrides: list[str]) -> None:
    """What `sslx-<stage> --config ... --print_config` prints; exits."""
    if str(REPO) not in sys.path:   # a checkout that is not pip-installed
        sys.path.insert(0, str(REPO))
    from sslx import cli
    cli._parse(f"sslx-{stage}", [f"sslx-{stage}", "--config", config, *overrides, "--print_config"])


def shell(argv: list[str]) -> str:
    return shlex.join(argv)


def execute(commands: list[list[str]], dry_run: bool) -> None:
    """Prints each command; unless dry_run, runs it and stops at the first that fails."""
    for argv in commands:
        print(shell(argv), flush=True)
        if not dry_run:
            code = subprocess.call(argv)
            if code:
                sys.exit(f"command failed with exit code {code}: {shell(argv)}")
