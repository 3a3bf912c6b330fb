"""Short real-data runs of the methods without a momentum encoder: no collapse, the probe beats random init."""
import pytest

from methods_cifar import check_learns_without_collapse


@pytest.mark.parametrize("method", ["simsiam", "barlow_twins", "vicreg", "supcon"])
def test_short_cifar10_run_learns_without_collapse(method, tmp_path, cifar10_dir):
    check_learns_without_collapse(method, tmp_path, cifar10_dir)
