"""Installs ``torchrl_misa``: MISA (Mutual Information Regularized Offline RL) for TorchRL."""

from setuptools import find_packages, setup

TESTS = [
    "pytest>=7",
    "black==26.10.1",
    "flake8>=7",
    "flake8-comprehensions==3.17.0",
    "h5py>=3.8",
    "gymnasium[mujoco]>=1.0",
    "hydra-core>=1.3",
    "tqdm",
    "scipy",
    "pandas",
    "matplotlib",
    "minari",
]
EXAMPLES = [
    "h5py>=3.8",
    "gymnasium[mujoco]>=1.0",
    "hydra-core>=1.3",
    "hydra-submitit-launcher",
    "tqdm",
    "wandb",
    "tensorboard",
    "pandas",
    "matplotlib",
]

setup(
    name="torchrl_misa",
    version="0.1.0",
    description="MISA: Mutual Information Regularized Offline RL, as a TorchRL LossModule",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["torchrl_misa", "torchrl_misa.*"]),
    install_requires=[
        "torch>=2.5",
        "torchrl>=0.14.1,<0.15",
        "tensordict>=0.14.3,<0.15",
        "numpy",
    ],
    extras_require={
        "tests": TESTS,
        "examples": EXAMPLES,
        "minari": ["minari"],
        "all": sorted(set(TESTS + EXAMPLES + ["minari"])),
    },
)
