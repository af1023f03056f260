"""Task heads on top of the encoder's last hidden state.

The families' sequence-classification heads are one shape, `out(drop(act(dense(cls))))`,
differing only in the activation (tanh for BERT's pooler and RoBERTa, ReLU for DistilBERT) and
whether dropout also precedes the dense layer (RoBERTa). So there is one class, configured by the
family's `Family` record.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.config import ModelConfig
from nanoft.models.encoder import activation_fn
from nanoft.weights.family import get_family

HEADS = ("classification", "regression", "token-classification", "masked-lm")


def classifier_dropout(config: ModelConfig) -> nn.Dropout:
    """The classifier's dropout: its own rate if the checkpoint sets one, else the encoder's."""
    return nn.Dropout(config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout)


class ClassificationHead(nn.Module):
    """Sentence-level head on the first token ([CLS] / <s>)."""

    def __init__(self, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.dense = nn.Linear(h, h)
        self.out = nn.Linear(h, num_labels)
        self.dropout = classifier_dropout(config)
        family = get_family(config.family)
        self.act = activation_fn(family.head_activation)
        self.dropout_before_dense = family.dropout_before_dense

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden[:, 0]  # (batch, hidden): the first token summarises the sequence
        if self.dropout_before_dense:
            x = self.dropout(x)
        x = self.dense(x)
        return self.out(self.dropout(self.act(x)))


class TokenClassificationHead(nn.Module):
    def __init__(self, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.dropout = classifier_dropout(config)
        self.out = nn.Linear(config.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))  # (batch, seq, num_labels)


class MaskedLMHead(nn.Module):
    """dense → activation → LayerNorm → projection onto the (tied) word embeddings + bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.dense = nn.Linear(h, h)
        self.act = activation_fn(get_family(config.family).mlm_activation or config.activation)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.dense(hidden)))
        return F.linear(x, word_embeddings, self.bias)  # (batch, seq, vocab)


def build_head(config: ModelConfig, head: Optional[str], num_labels: int) -> Optional[nn.Module]:
    if head is None:
        return None
    if head == "classification":
        return ClassificationHead(config, num_labels)
    if head == "regression":
        return ClassificationHead(config, 1)
    if head == "token-classification":
        return TokenClassificationHead(config, num_labels)
    if head == "masked-lm":
        return MaskedLMHead(config)
    raise ValueError(f"unknown head {head!r}; use one of {', '.join(HEADS)} or None")
