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


def parse_with_overrides(parser: argparse.ArgumentParser,
                         argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Launcher flags before `--`; the stage's `--config.key=value` overrides after it."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:split]), argv[split + 1:]


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
