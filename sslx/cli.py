"""Console entry points: parse `--config RECIPE --workdir DIR [--config.key=value ...]`, run one stage.

`--help` prints the usage and the stage's recipes; `--print_config` prints the resolved config (recipe plus
overrides) and exits. Every user error ends as one line on stderr naming the problem and the fix, with exit
code 2.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import os
import sys
import textwrap
import traceback
from typing import Any, Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Bad flags, a bad recipe file or unknown override keys.
PARSE_ERRORS = (ValueError, TypeError, OSError, flags.Error)
# Raised by stages for bad config values, missing data or checkpoints, and a non-finite loss.
RUN_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


@dataclasses.dataclass(frozen=True)
class Program:
    """What `--help` and the unknown-key error say about one entry point."""
    name: str
    summary: str
    recipe_prefixes: tuple[str, ...]   # its recipes in configs/ (empty: those no other program claims)
    keys_defined_in: str               # where the recipe's keys, and their defaults, are defined
    example: str
    out_flag: str = "workdir"          # the required output flag, its metavar and help
    out_metavar: str = "DIR"
    out_help: str = ("where checkpoints, config.json, metrics and results.json go: a local folder or "
                     "gs://BUCKET/DIR; rerunning the same command resumes from it")


EVAL_KEYS = "eval_config() in sslx/config.py"
PRETRAIN_KEYS = "base_config() in sslx/config.py (a method's own section: its file in sslx/methods/)"
PROGRAMS = {p.name: p for p in (
    Program("sslx-pretrain", "Self-supervised pretraining of an encoder (SimCLR, BYOL, MoCo, ...).", (),
            PRETRAIN_KEYS, "--config simclr_cifar10 --workdir gs://BUCKET/simclr_r18"),
    Program("sslx-linear-eval", "Linear evaluation of a pretrained encoder.", ("linear_eval_",), EVAL_KEYS,
            "--config linear_eval_cifar10 --workdir DIR --config.pretrained=PRETRAIN_DIR"),
    Program("sslx-knn", "Weighted kNN evaluation of a pretrained encoder.", ("knn_",), EVAL_KEYS,
            "--config knn_cifar10 --workdir DIR --config.pretrained=PRETRAIN_DIR"),
    Program("sslx-finetune", "Fine-tuning of a pretrained encoder on a fraction of the labels.", ("finetune_",),
            EVAL_KEYS, "--config finetune_cifar10 --workdir DIR --config.pretrained=PRETRAIN_DIR"),
    Program("sslx-distill", "SimCLRv2 distillation of a fine-tuned teacher into a student.", ("distill_",),
            "distill_config() in sslx/config.py", "--config distill_cifar10 --workdir DIR "
            "--config.teacher=FINETUNE_DIR"),
    Program("sslx-preview", "The augmentation preview of a recipe's data and views (a PNG), no training.", (),
            PRETRAIN_KEYS, "--config simclr_cifar10 --out preview.png", "out", "FILE",
            "the PNG file to write"),
    Program("simclrv2_recipe", "The SimCLRv2 chain (pretrain, fine-tune, distil, evaluate) under one root.",
            ("simclrv2_recipe_",), "its recipe file, whose sections are those of the stages (sslx/config.py)",
            "--config simclrv2_recipe_cifar10 --workdir ROOT"),
    Program("reproduce", "A reproduction suite: methods' recipes scored by kNN and linear eval next to the "
            "raw-pixel and random-init baselines, under one root.", ("reproduce_",),
            "suite_config() in sslx/config.py", "--config reproduce_cifar10_cpu --workdir ROOT"),
)}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _fail(program: str, error: BaseException, leave: Callable[[int], None] = sys.exit) -> None:
    print(f"{program}: error: {_one_line(error)}", file=sys.stderr, flush=True)
    leave(2)


def _recipes_of(program: Program) -> list[str]:
    from sslx.config import recipe_names
    claimed = tuple(prefix for p in PROGRAMS.values() for prefix in p.recipe_prefixes)
    if program.recipe_prefixes:
        return [n for n in recipe_names() if n.startswith(program.recipe_prefixes)]
    return [n for n in recipe_names() if not n.startswith(claimed)]


def _column(text: str) -> str:
    """`text` wrapped to the help's second column."""
    indent = " " * 24
    return textwrap.fill(text, width=112, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False).lstrip()


def usage(program: Program) -> str:
    recipes = _column(f"a recipe name ({', '.join(_recipes_of(program))}),")
    out = f"--{program.out_flag} {program.out_metavar}"
    return f"""usage: {program.name} --config RECIPE {out} [--config.KEY=VALUE ...] [--print_config]

{program.summary}

  --config RECIPE       {recipes}
                        or a recipe file (configs/NAME.py, or your own with a get_config())
  {out:<20}  {_column(program.out_help)}
  --config.KEY=VALUE    override any key of the recipe, e.g. --config.batch_size=1024 --config.model.dtype=bfloat16;
                        the keys and their defaults: {program.keys_defined_in}, and the recipe
  --print_config        print the resolved config (recipe plus overrides) and exit, no {out.split()[0]} needed
  -h, --help            this message

example: {program.name} {program.example}"""


def _config_spec(argv: list[str]) -> tuple[int, str] | None:
    """(index in argv, value) of the --config flag."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return i, arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None


def _method_override(argv: list[str]) -> str:
    """The last `--config.method` value on the command line ("" if none)."""
    method = ""
    for i, arg in enumerate(argv):
        if arg.startswith("--config.method="):
            method = arg.split("=", 1)[1]
        elif arg == "--config.method" and i + 1 < len(argv):
            method = argv[i + 1]
    return method


def _with_recipe_path(argv: list[str], index: int, spec: str) -> list[str]:
    """argv with the recipe name or path replaced by its file (a `:argument` suffix kept)."""
    from sslx.config import resolve_recipe
    recipe, colon, argument = spec.partition(":")
    value = f"{resolve_recipe(recipe)}{colon}{argument}"
    argv = list(argv)
    argv[index] = f"--config={value}" if argv[index].startswith("--config=") else value
    return argv


def _unknown_key_message(program: Program, recipe: str, argv: list[str]) -> str:
    """Names the first override whose key the recipe lacks, a close match, and where the keys are defined."""
    from sslx.config import load_recipe
    config = load_recipe(recipe)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        section, parts = config, arg[len("--config."):].split("=", 1)[0].split(".")
        for depth, part in enumerate(parts):
            if hasattr(section, "keys") and part in section:
                section = section[part]
                continue
            where = ".".join(["config", *parts[:depth]])
            near = difflib.get_close_matches(part, list(section.keys()) if hasattr(section, "keys") else [], n=1)
            hint = f"did you mean {where}.{near[0]}? " if near else ""
            return (f"unknown config key {part!r} ({arg}): {where} has no such key; {hint}the keys are defined in "
                    f"{program.keys_defined_in} and {recipe}; --print_config lists them")
    return f"an override names a key the recipe lacks; {program.keys_defined_in} and {recipe} define the keys"


def _parse(name: str, argv: list[str]):
    """Parses `--config` (executed, overrides applied, locked: no new keys) and the program's required output
    flag (`--workdir`, or `--out`); returns (config, its value). `--help` and `--print_config` print and exit here.
    """
    from sslx import config as config_lib
    program = PROGRAMS[name]
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(usage(program))
        sys.exit(0)
    found = _config_spec(argv)
    if found is None:
        _fail(name, ValueError(f"--config is required: pass a recipe such as --config {_recipes_of(program)[0]} "
                               f"(see {name} --help)"))
    recipe = found[1].partition(":")[0]   # as the user wrote it, for messages
    try:
        argv = _with_recipe_path(argv, *found)
    except FileNotFoundError as error:
        _fail(name, error)
    printing = "--print_config" in argv
    argv = [arg for arg in argv if arg != "--print_config"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py) returning a ConfigDict.",
                                    flag_values=flag_values, lock_config=True)
    flags.DEFINE_string(program.out_flag, None, program.out_help, flag_values=flag_values)
    method = _method_override(argv)
    try:
        if method:
            from sslx.methods import method_class
            method_class(method)   # an unknown name or a module that does not import: one line, now
        with config_lib.method_override(method):   # its config section exists before the overrides apply
            flag_values(argv)
            config = flag_values.config
            config.to_dict()  # the recipe loads lazily: surface its errors here
        if printing:
            print(config, end="")
            sys.exit(0)
        if not flag_values[program.out_flag].value:
            raise ValueError(f"--{program.out_flag} is required: pass {program.out_help.split(';')[0]}")
    except (KeyError, AttributeError):  # how ml_collections reports a key the recipe lacks
        with config_lib.method_override(method):
            _fail(name, ValueError(_unknown_key_message(program, recipe, argv)))
    except PARSE_ERRORS as error:
        _fail(name, error)
    except Exception as error:  # noqa: BLE001 - the recipe's own code failed: show where in the recipe
        _recipe_failed(name, _config_spec(argv)[1].partition(":")[0], error)
    return config, flag_values[program.out_flag].value


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


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discards what native code writes to file descriptor 2 meanwhile; Python's own errors surface afterwards."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> None:
    """Loads TensorFlow without the lines TF >= 2.20 writes to stderr while loading, before its log level applies
    (two "oneDNN custom operations are on" notices). oneDNN stays on: with TF_ENABLE_ONEDNN_OPTS=0 the host
    augmentation made 2.3x fewer views per CPU-second at 224 px (docs/scaling.md)."""
    with _native_stderr_silenced():
        import tensorflow  # noqa: F401


def run_program(name: str, load: Callable[[], Callable[[Any, str], Any]]) -> None:
    """An entry point from parsing to exit: parses first, so that --help answers before JAX loads, and
    --print_config and flag errors before TF loads or JAX starts a backend (the methods' config sections import
    JAX: ~1 s); `load()` then gives the function run on (config, workdir) in the distributed run.
    A preemption is a clean exit, a bad input one line."""
    logging.set_verbosity(logging.WARNING)
    config, workdir = _parse(name, sys.argv)
    import_tensorflow()
    run = load()
    from sslx import metrics, parallel  # imports jax, which starts no backend until a device is touched
    from sslx.workdir import Preempted
    try:
        # Before anything touches devices: afterwards jax.devices() spans every process of the run.
        parallel.initialize_distributed(config.distributed)
        parallel.check_same_config(config)
        run(config, workdir)
    except Preempted as stopped:  # a checkpoint of the last step is committed: a clean, resumable exit
        metrics.log(str(stopped))
    except (*RUN_ERRORS, parallel.DistributedError) as error:
        _fail(name, error, leave=parallel.exit_now)


def _run_stage(name: str, module: str, function: str) -> None:
    run_program(name, lambda: getattr(importlib.import_module(module), function))


def pretrain() -> None:
    _run_stage("sslx-pretrain", "sslx.stages.pretrain", "run_pretraining")


def benchmark() -> None:
    from sslx.benchmark import main
    if not {"-h", "--help"} & set(sys.argv[1:]):
        import_tensorflow()
    main()


def linear_eval() -> None:
    _run_stage("sslx-linear-eval", "sslx.stages.linear_eval", "run_linear_eval")


def knn() -> None:
    _run_stage("sslx-knn", "sslx.stages.knn", "run_knn")


def finetune() -> None:
    _run_stage("sslx-finetune", "sslx.stages.finetune", "run_finetune")


def distill() -> None:
    _run_stage("sslx-distill", "sslx.stages.distill", "run_distill")


def make_tfrecords() -> None:
    import_tensorflow()
    from sslx.data.make_tfrecords import main
    try:
        main(sys.argv[1:])
    except (*RUN_ERRORS, FileExistsError) as error:
        _fail("sslx-make-tfrecords", error)


def preview() -> None:
    """`sslx-preview --config C --out FILE.png [--config.key=value ...]`: the augmentation preview, no training."""
    logging.set_verbosity(logging.WARNING)
    config, out = _parse("sslx-preview", sys.argv)
    import_tensorflow()
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
    import_tensorflow()
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
