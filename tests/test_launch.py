"""The launchers' dry runs print the exact commands for a few slice sizes, clusters and process counts."""
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"


def dry_run(script, *args):
    done = subprocess.run([sys.executable, str(LAUNCH / script), "--dry-run", *args], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def tpu(action, accelerator_type, *extra):
    return dry_run("tpu_pod.py", action, "--name=simclr", "--zone=us-central2-b",
                   f"--accelerator-type={accelerator_type}", *extra)


@pytest.mark.parametrize("accelerator_type,chips,workers,devices,version", [
    ("v4-8", 4, 1, 4, "tpu-ubuntu2204-base"),
    ("v4-32", 16, 4, 16, "tpu-ubuntu2204-base"),
    ("v5p-128", 64, 16, 64, "v2-alpha-tpuv5"),
    ("v5litepod-8", 8, 1, 8, "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", 16, 4, 16, "v2-alpha-tpuv5-lite"),
    ("v3-32", 16, 4, 32, "tpu-ubuntu2204-base"),
])
def test_tpu_slice_sizes_and_create(accelerator_type, chips, workers, devices, version):
    code, out, err = tpu("create", accelerator_type, "--spot")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"# {accelerator_type}: {chips} chips, {workers} workers, {devices} JAX devices"
    assert shlex.split(lines[1]) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "simclr",
                                     f"--accelerator-type={accelerator_type}", f"--version={version}", "--spot",
                                     "--zone=us-central2-b"]


def test_tpu_up_installs_runs_on_every_worker_and_streams_worker_zero():
    code, out, err = tpu("up", "v4-32", "--workdir=/mnt/shared/r50", "--batch-size=4096", "--project=p",
                         "--", "--config.epochs=100")
    assert code == 0, err
    commands = [shlex.split(line) for line in out.splitlines()[1:]]
    assert [c[:5] for c in commands if c[0] == "gcloud"] == [
        ["gcloud", "compute", "tpus", "tpu-vm", action] for action in ("create", "scp", "ssh", "ssh", "ssh")]
    assert commands[1][0] == "tar" and "--exclude=.git" in commands[1]
    assert "--worker=all" in commands[2] and "--project=p" in commands[2]
    run = commands[4]
    assert "--worker=all" in run
    remote = shlex.split(next(a for a in run if a.startswith("--command=")).split("=", 1)[1])
    assert remote[remote.index("nohup") + 1:remote.index(">")] == [
        "sslx-pretrain", "--config", "configs/simclr_imagenet.py", "--workdir", "/mnt/shared/r50",
        "--config.distributed.cluster=tpu", "--config.epochs=100"]
    assert "--worker=0" in commands[5] and any("tail" in a for a in commands[5])


def test_tpu_install_builds_a_python_that_setup_py_accepts():
    code, out, err = tpu("install", "v4-32")
    assert code == 0, err
    setup = next(a for a in shlex.split(out.splitlines()[3]) if a.startswith("--command=")).split("=", 1)[1]
    steps = [shlex.split(step) for step in setup.split(" && ")]
    venv = next(step for step in steps if step[1:3] == ["venv", "--allow-existing"])
    version = venv[venv.index("--python") + 1]
    required = re.search(r'python_requires=">=([0-9.]+)"', (LAUNCH.parent / "setup.py").read_text()).group(1)
    assert tuple(map(int, version.split("."))) >= tuple(map(int, required.split("."))), (version, required)
    pip = next(step for step in steps if step[1:3] == ["pip", "install"])
    assert pip[pip.index("--python") + 1] == f"{venv[-1]}/bin/python" and pip[-2:] == ["-e", "~/sslx[tpu]"]
    run = next(a for a in shlex.split(tpu("run", "v4-32", "--workdir=gs://b/r")[1].splitlines()[1])
               if a.startswith("--command="))
    assert f"PATH={venv[-1]}/bin:$PATH" in run   # the stage runs from that environment


def test_launchers_help_and_print_config():
    for script in ("tpu_pod.py", "slurm.py", "local.py", "simclrv2_recipe.py"):
        done = subprocess.run([sys.executable, str(LAUNCH / script), "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "--config" in done.stdout and "--print_config" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, str(LAUNCH / "slurm.py"), "--print_config", "--config=simclr_imagenet",
                           "--", "--config.batch_size=1024"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "batch_size: 1024" in done.stdout.splitlines() and "name: resnet50" in done.stdout


def test_tpu_delete():
    code, out, _ = tpu("delete", "v5p-128")
    assert code == 0
    assert out.splitlines()[1] == "gcloud compute tpus tpu-vm delete simclr --quiet --zone=us-central2-b"


@pytest.mark.parametrize("args,message", [
    (("create", "v4-31"), "v4 sizes count 2 cores per chip"),
    (("create", "tpu-big"), "expected e.g. v4-32"),
    (("run", "v5p-128", "--workdir=/w", "--batch-size=4000"), "not divisible by the 64 JAX devices"),
    (("run", "v4-32"), "--workdir is required"),
])
def test_tpu_bad_input(args, message):
    code, _, err = tpu(*args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_slurm_script():
    code, out, err = dry_run("slurm.py", "--nodes=4", "--gpus-per-node=8", "--partition=gpu",
                             "--workdir=/shared/r50", "--batch-size=4096", "--", "--config.epochs=100")
    assert code == 0, err
    for directive in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu"):
        assert f"#SBATCH {directive}" in out.splitlines()
    srun = next(line for line in out.splitlines() if line.startswith("srun"))
    assert shlex.split(srun) == ["srun", "--kill-on-bad-exit=1", "sslx-pretrain", "--config",
                                 "configs/simclr_imagenet.py", "--workdir", "/shared/r50", "--config.epochs=100"]
    assert out.splitlines()[-1] == "sbatch slurm-logs/sslx.sbatch"


def test_slurm_batch_must_divide_the_gpus():
    code, _, err = dry_run("slurm.py", "--nodes=3", "--gpus-per-node=8", "--workdir=/w", "--batch-size=4096")
    assert code != 0 and "not divisible by the 24 GPUs" in err


def test_local_processes_share_one_coordinator():
    code, out, err = dry_run("local.py", "--num-processes=3", "--devices-per-process=2", "--port=12345",
                             "--workdir=/tmp/w", "--", "--config.total_steps=5")
    assert code == 0, err
    lines = [shlex.split(line) for line in out.splitlines()]
    assert len(lines) == 3
    for index, words in enumerate(lines):
        assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in words
        assert "--config.distributed.coordinator_address=127.0.0.1:12345" in words
        assert "--config.distributed.num_processes=3" in words
        assert f"--config.distributed.process_id={index}" in words
        assert words[-1] == "--config.total_steps=5"
