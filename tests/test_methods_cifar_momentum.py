"""Short real-data runs of the momentum-encoder methods' CIFAR-10 recipes: no collapse, the probe beats random init."""
import pytest

from methods_cifar import check_learns_without_collapse


@pytest.mark.parametrize("method", ["byol", "mocov2", "mocov3"])
def test_short_cifar10_run_learns_without_collapse(method, tmp_path, cifar10_dir):
    check_learns_without_collapse(method, tmp_path, cifar10_dir)
