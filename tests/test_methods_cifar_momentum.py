"""Short real-data runs of the momentum-encoder methods' CIFAR-10 recipes: no collapse, the probe beats random init."""
import os

import pytest

from methods_cifar import check_learns_without_collapse

pytestmark = pytest.mark.skipif(not os.environ.get("SSLX_SLOW"), reason="slow and not yet passing: see "
                                "tests/methods_cifar.py; run with SSLX_SLOW=1")


@pytest.mark.parametrize("method", ["byol", "mocov2", "mocov3"])
def test_short_cifar10_run_learns_without_collapse(method, tmp_path, cifar10_dir):
    check_learns_without_collapse(method, tmp_path, cifar10_dir)
