"""sslx: self-supervised contrastive pretraining of image encoders in JAX/Flax."""
from setuptools import find_packages, setup

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
    version="0.1.0",
    description="Self-supervised contrastive pretraining (SimCLR v1/v2 and kin) in JAX/Flax at pod scale.",
    packages=find_packages(include=["sslx", "sslx.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9",
        "tensorboard",
        "ml-collections>=1.0",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.89",
        "etils[epath]",
        "scikit-learn>=1.3",
        "matplotlib>=3.6",
        "absl-py",
        "numpy",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3"]},
    entry_points={"console_scripts": [f"{name}={target}" for name, target in STAGES.items()]},
)
