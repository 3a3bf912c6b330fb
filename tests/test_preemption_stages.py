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


def test_protocol_linear_eval_resumes_each_classifier_bitwise_and_a_finished_one_is_not_retrained(
        pretrained, tmp_path, monkeypatch):
    import json

    from sslx.config import eval_config
    from sslx.evaluators import common
    from sslx.stages import linear_eval
    from test_pretrain import Interrupted
    c = eval_config()
    c.pretrained, c.eval_batch_size, c.embedding_map_points = str(pretrained), 304, 0
    c.linear.mode, c.linear.epochs, c.linear.batch_size = "protocol", 1, 256     # 1,437 digits: 5 steps
    c.linear.log_every_steps, c.linear.checkpoint_every_steps = 1, 2
    reference = linear_eval.run_linear_eval(c, str(tmp_path / "reference"))
    original, remaining = common.labelled_batches, iter(range(3))

    def dying(*args, **kwargs):
        stream = original(*args, **kwargs)
        next_batch = stream.__next__

        class Dying:   # the input dies after three batches, as a pre-empted job's would
            position = property(lambda self: stream.position)
            skipped = property(lambda self: stream.skipped)

            def __next__(self):
                if next(remaining, None) is None:
                    raise Interrupted
                return next_batch()
        return Dying()

    with monkeypatch.context() as patched:
        patched.setattr(linear_eval.common, "labelled_batches", dying)
        with pytest.raises(Interrupted):
            linear_eval.run_linear_eval(c, str(tmp_path / "run"))
    resumed = linear_eval.run_linear_eval(c, str(tmp_path / "run"))
    assert resumed["top1"] == reference["top1"] and resumed["top5"] == reference["top5"]
    [directory] = (tmp_path / "run" / "classifiers").iterdir()
    assert directory.name.startswith("lr0.1-train-")
    assert_bitwise_equal(directory, tmp_path / "reference" / "classifiers" / directory.name, step=5)
    steps = [json.loads(line)["step"] for line in (directory / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    # Finished: a rerun reads the last checkpoint and trains nothing (no batch is drawn), also with other loop
    # settings, which do not change the classifier.
    c.linear.log_every_steps = 5
    with monkeypatch.context() as patched:
        patched.setattr(linear_eval.common, "labelled_batches", lambda *a, **k: iter(()))
        assert linear_eval.run_linear_eval(c, str(tmp_path / "run"))["top1"] == reference["top1"]
    assert [path.name for path in (tmp_path / "run" / "classifiers").iterdir()] == [directory.name]
