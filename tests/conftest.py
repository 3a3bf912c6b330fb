"""Test set-up: 8 simulated CPU devices, set before JAX initialises its backend."""
import os
import pathlib
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Most test time is XLA:CPU compiling. Non-partitionable threefry compiles a network's random init about 3x
# faster (the values differ; no test depends on them), and a compilation cache shared by the xdist workers of
# one run lets a program compiled by one test (a resumed run, the same tiny config) be reused by the next.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"sslx-test-jax-cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

SHARED_CIFAR10 = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar10_dir():
    """Real CIFAR-10 TFRecords beside the checkout; tests that need them skip where it is absent."""
    if not (SHARED_CIFAR10 / "labels.txt").exists():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_CIFAR10} (needs ../shared/data/cifar10 beside the checkout)")
    return SHARED_CIFAR10
