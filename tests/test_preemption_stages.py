"""Resume on the same trajectory for every method's extra state and for the fine-tuning and distillation stages
(split from test_preemption.py so the two test workers share the fault-injection runs)."""
import pytest

from sslx.stages import pretrain
from test_preemption import assert_bitwise_equal, digits_config


@pytest.mark.parametrize("method", ["byol", "mocov2", "mocov3", "simsiam", "barlow_twins", "vicreg", "supcon"])
def test_resume_is_bitwise_equal_for_every_method(method, tmp_path, monkeypatch):
    config = digits_config(method, total_steps=4)
    config.checkpoint_every_steps = 2
    pretrain.run_pretraining(config, str(tmp_path / "reference"))
    interrupted_then_resumed(pretrain.run_pretraining, config, tmp_path / "run", pretrain.Pretraining,
                             monkeypatch, 3)
    assert_bitwise_equal(tmp_path / "run", tmp_path / "reference", step=4)


def interrupted_then_resumed(run, config, workdir, stage, monkeypatch, batches):
    from test_pretrain import Interrupted, interrupt_after
    with monkeypatch.context() as patched:
        interrupt_after(patched, batches, stage)
        with pytest.raises(Interrupted):
            run(config, str(workdir))
    return run(config, str(workdir))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrained")
    pretrain.run_pretraining(digits_config(total_steps=4), str(workdir))
    return workdir


def test_fine_tuning_and_distillation_resume_bitwise_equal(pretrained, tmp_path, monkeypatch):
    from sslx.config import distill_config, eval_config
    from sslx.stages import distill, finetune
    c = eval_config()
    c.pretrained, c.eval_batch_size = str(pretrained), 304
    c.finetune.batch_size, c.finetune.epochs, c.finetune.label_fraction = 64, 2.0, 0.1  # 150 labels: 5 steps
    c.finetune.log_every_steps, c.finetune.checkpoint_every_steps = 1, 2
    finetune.run_finetune(c, str(tmp_path / "teacher"))
    resumed = interrupted_then_resumed(finetune.run_finetune, c, tmp_path / "resumed", finetune.FineTuning,
                                       monkeypatch, 3)
    assert resumed["finetune_steps"] == 5
    assert_bitwise_equal(tmp_path / "resumed", tmp_path / "teacher", step=5)
    d = distill_config()
    d.teacher, d.eval_batch_size = str(tmp_path / "teacher"), 304
    d.distill.batch_size, d.distill.total_steps, d.distill.labelled_batch_size = 64, 5, 32
    d.distill.supervised_weight, d.distill.label_fraction = 0.5, 0.1  # two input streams to resume
    d.distill.log_every_steps, d.distill.checkpoint_every_steps = 1, 2
    distill.run_distill(d, str(tmp_path / "student"))
    interrupted_then_resumed(distill.run_distill, d, tmp_path / "student_resumed", distill.Distillation,
                             monkeypatch, 3)
    assert_bitwise_equal(tmp_path / "student_resumed", tmp_path / "student", step=5)
