"""A new method is one file: methods are found in sslx/methods/ by name, or imported from the Python path as
config.method='<module>:<Class>'; each owns its config section; the stages and the loop name no method."""
import ast
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import tokenize

import numpy as np
import pytest

from sslx import config as config_lib
from sslx.config import base_config
from sslx.methods import METHODS, build_method, config_sections, method_class

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY_VIT = {"depth": 1, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32, "patch_size": 2, "image_size": 8}

# The method sections base_config() held before the methods owned them, frozen: moving them must change nothing.
SECTIONS = {
    "byol": {"tau_base": 0.996},
    "moco": {"momentum": 0.999, "queue_size": 65536, "shuffle_bn": False},
    "dino": {"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256, "use_bn_in_head": False,
             "norm_last_layer": True, "momentum_teacher": 0.996, "student_temperature": 0.1,
             "teacher_temperature": 0.04, "warmup_teacher_temperature": 0.04, "warmup_teacher_temperature_epochs": 0,
             "center_momentum": 0.9, "freeze_last_layer_epochs": 1.0},
    "swav": {"num_prototypes": 3000, "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3,
             "queue_length": 0, "queue_start_epoch": 15.0, "freeze_prototypes_epochs": 1.0},
    "barlow_twins": {"lambda_offdiag": 5e-3},
    "vicreg": {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0},
}
NAMES = {"simclr", "byol", "mocov2", "mocov3", "simsiam", "barlow_twins", "vicreg", "supcon", "dino", "swav"}

# A method of one's own, outside sslx: Wang & Isola's (2020) alignment and uniformity on the hypersphere, with its
# config section next to its code. `weighted_loss` lets a test see which uniformity weight it trained with.
ALIGN_UNIFORM = '''
"""Alignment and uniformity of l2-normalised projections (Wang & Isola 2020), as a method outside sslx."""
import jax
import jax.numpy as jnp
import ml_collections

from sslx.losses import l2_normalize
from sslx.methods.base import Method, views


class AlignUniform(Method):
    config_section = "align_uniform"

    @classmethod
    def default_config(cls):
        c = ml_collections.ConfigDict()
        c.alpha = 2.0              # alignment: E ||z1 - z2||^alpha
        c.t = 2.0                  # uniformity: log E exp(-t ||zi - zj||^2)
        c.uniformity_weight = 1.0
        return c

    def loss(self, params, batch_stats, extra, batch, rng, step):
        del extra, step
        cfg = self.config.align_uniform
        view1, view2 = views(batch)
        n = view1.shape[0]
        out, stats = self.forward(params, batch_stats, jnp.concatenate([view1, view2]), rng)
        z = l2_normalize(out["z"])
        alignment = jnp.mean(jnp.linalg.norm(z[:n] - z[n:], axis=-1) ** cfg.alpha)
        sq_dists = jnp.sum((z[:, None] - z[None]) ** 2, -1)
        off_diagonal = ~jnp.eye(2 * n, dtype=bool)
        uniformity = jnp.log(jnp.sum(jnp.exp(-cfg.t * sq_dists) * off_diagonal) / off_diagonal.sum())
        weighted = alignment + cfg.uniformity_weight * uniformity
        probe_loss, probe_metrics = self.probe_loss(jax.tree.map(lambda x: x[:n], out), batch)
        metrics = {"alignment": alignment, "uniformity": uniformity, "weighted_loss": weighted, **probe_metrics}
        return weighted + probe_loss, (stats, metrics, {})
'''


@pytest.fixture
def external_method(tmp_path, monkeypatch):
    """The folder holding align_uniform.py, on the Python path of this process."""
    (tmp_path / "align_uniform.py").write_text(ALIGN_UNIFORM)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("align_uniform", None)


def test_every_method_is_found_and_base_config_holds_its_section_with_the_old_defaults():
    assert set(METHODS) == NAMES and all(cls.name == name for name, cls in METHODS.items())
    config = base_config()
    for section, defaults in SECTIONS.items():
        assert config[section].to_dict() == defaults, section
    # The sections come from the methods, and only those sections do.
    assert {s: c.to_dict() for s, c in config_sections().items()} == SECTIONS
    assert METHODS["mocov2"].config_section == METHODS["mocov3"].config_section == "moco"


def test_unknown_names_and_unimportable_modules_are_one_line_errors():
    with pytest.raises(ValueError, match=r"config.method='simclrr' is unknown; use one of \['barlow_twins', .*"
                                         r"or a method of your own as '<module>:<Class>'"):
        method_class("simclrr")
    with pytest.raises(ValueError, match="config.method='no_such_module:Foo': module 'no_such_module' does not "
                                         "import .*; put the folder that holds it on PYTHONPATH"):
        method_class("no_such_module:Foo")
    with pytest.raises(ValueError, match="sslx.losses has no concrete Method subclass 'nt_xent'"):
        method_class("sslx.losses:nt_xent")
    # A dotted module without a class: its one Method subclass; with more, the error says to name one.
    assert method_class("sslx.methods.byol") is METHODS["byol"]
    with pytest.raises(ValueError, match=r"sslx.methods.moco defines 2 Method subclasses \['MoCoV2', 'MoCoV3'\]; "
                                         r"name one as 'sslx.methods.moco:<Class>'"):
        method_class("sslx.methods.moco")


def test_a_recipe_names_an_external_method_and_gets_its_section(external_method):
    config = base_config(method="align_uniform:AlignUniform")
    assert config.method == "align_uniform:AlignUniform"
    assert config.align_uniform.to_dict() == {"alpha": 2.0, "t": 2.0, "uniformity_weight": 1.0}
    assert config.dino.out_dim == 65536                       # the registered methods' sections stay
    assert "align_uniform" not in base_config()               # importing it registered nothing
    with config_lib.method_override("align_uniform:AlignUniform"):   # as sslx.cli loads a recipe
        assert "align_uniform" in base_config()
    # A config without the section (the method set after base_config()) fails before any compile, naming the fix.
    config = base_config()
    config.method = "align_uniform:AlignUniform"
    with pytest.raises(ValueError, match=r"config.align_uniform, the section of config.method='align_uniform:"
                                         r"AlignUniform', is missing: start the recipe from sslx.config.base_config"):
        build_method(config, num_classes=10, total_steps=2)


def test_a_method_section_may_not_take_a_shared_or_another_methods_name(external_method):
    (external_method / "clashing.py").write_text(textwrap.dedent("""
        import ml_collections
        from sslx.methods.dino import DINO
        from sslx.methods.simclr import SimCLR

        class Optim(SimCLR):
            config_section = "optim"
            @classmethod
            def default_config(cls):
                return ml_collections.ConfigDict({"lr": 1.0})

        class OtherDino(DINO):
            @classmethod
            def default_config(cls):
                return ml_collections.ConfigDict({"out_dim": 8})
    """))
    with pytest.raises(ValueError, match="config.optim is a shared section"):
        base_config(method="clashing:Optim")
    with pytest.raises(ValueError, match="clashing.OtherDino and sslx.methods.dino.DINO both define config.dino"):
        base_config(method="clashing:OtherDino")
    sys.modules.pop("clashing", None)


def test_an_external_method_pretrains_from_the_cli_with_its_section_overridden(external_method, tmp_path):
    """One file outside sslx, on PYTHONPATH, named on the command line with an override of its own section."""
    workdir = tmp_path / "pretrain"
    args = ["--config", "quickstart", "--workdir", str(workdir), "--config.method=align_uniform:AlignUniform",
            "--config.align_uniform.uniformity_weight=0.25", "--config.model.name=vit_ti4",
            *[f"--config.model.vit.{key}={value}" for key, value in TINY_VIT.items()],
            "--config.batch_size=32", "--config.total_steps=2", "--config.optim.warmup_steps=1",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=2", "--config.eval.linear_probe=False"]
    code = "import sys; sys.argv[0] = 'sslx-pretrain'; from sslx.cli import pretrain; pretrain()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(external_method)])}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["method"] == "align_uniform:AlignUniform" and results["step"] == 2
    # The override reached the loss: the logged objective weighs uniformity by 0.25, not the default 1.
    assert results["uniformity"] < 0 and results["alignment"] > 0
    np.testing.assert_allclose(results["weighted_loss"], results["alignment"] + 0.25 * results["uniformity"],
                               rtol=1e-5)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["align_uniform"] == {"alpha": 2.0, "t": 2.0, "uniformity_weight": 0.25}


def method_words() -> set[str]:
    """Every registered method's name, config section, class name and module name, lower-case."""
    words = set(METHODS)
    for cls in METHODS.values():
        words |= {cls.config_section, cls.__name__.lower(), cls.__module__.rsplit(".", 1)[-1]}
    return words - {""}


def method_mentions(source: str, words: set[str]) -> list[str]:
    """Identifiers and string literals of `source` that are a method's word: a method-specific branch
    (`config.dino`, `config.method == "swav"`, `from sslx.methods.byol import BYOL`). Prose (comments, and words
    inside longer strings, such as "SimCLR's crops") is not code and is left alone."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string.lower() in words:
            found.append(f"line {token.start[0]}: {token.string}")
        elif token.type == tokenize.STRING and _literal(token.string).lower() in words:
            found.append(f"line {token.start[0]}: {token.string}")
    return found


def _literal(string_token: str) -> str:
    """A plain string literal's value; "" for an f-string (its parts are not names)."""
    try:
        return str(ast.literal_eval(string_token))
    except ValueError:
        return ""


def test_the_stages_and_the_loop_name_no_method():
    words = method_words()
    assert {"dino", "swav", "moco", "mocov2", "barlow_twins", "barlowtwins", "vicreg"} <= words
    # The check sees a method-specific branch where one is written.
    assert method_mentions('if config.method == "dino":\n    x = config.swav.epsilon\n', words) == [
        'line 1: "dino"', "line 2: swav"]
    assert method_mentions("# SimCLR's protocol\nx = 'SimCLR crops'\n", words) == []
    files = [*sorted((REPO / "sslx" / "stages").glob("*.py")), REPO / "sslx" / "train.py", REPO / "sslx" / "resume.py"]
    mentions = {str(f.relative_to(REPO)): m for f in files if (m := method_mentions(f.read_text(), words))}
    assert mentions == {}, f"method-specific code in a method-agnostic file: {mentions}"
