"""Short real-data runs of the methods without a momentum encoder: no collapse, the probe beats random init."""
import os

import pytest

from methods_cifar import check_learns_without_collapse

pytestmark = pytest.mark.skipif(not os.environ.get("SSLX_SLOW"), reason="slow and not yet passing: see "
                                "tests/methods_cifar.py; run with SSLX_SLOW=1")


@pytest.mark.parametrize("method", ["simsiam", "barlow_twins", "vicreg", "supcon"])
def test_short_cifar10_run_learns_without_collapse(method, tmp_path, cifar10_dir):
    check_learns_without_collapse(method, tmp_path, cifar10_dir)
