"""nanoft: fine-tune and study encoder transformers (BERT, RoBERTa, DistilBERT) in pure PyTorch.

Public API: `load_model`, `load_tokenizer`, `Trainer`, `nanoft.peft.apply`,
`nanoft.attention.build`, `nanoft.kernels.attention`.
"""
from nanoft.config import ModelConfig
from nanoft.errors import NanoftError
from nanoft.weights import load_model, load_tokenizer, save_model

__version__ = "0.1.0"


def __getattr__(name: str):
    # The trainer pulls in the data pipeline; import it only when asked for.
    if name == "Trainer":
        from nanoft.train import Trainer

        return Trainer
    raise AttributeError(f"module 'nanoft' has no attribute {name!r}")


__all__ = ["load_model", "load_tokenizer", "save_model", "ModelConfig", "NanoftError", "Trainer", "__version__"]
