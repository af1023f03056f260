"""One post-LayerNorm transformer encoder for BERT, RoBERTa and DistilBERT.

    embeddings = LayerNorm(word[ids] + position[pos] + token_type[types])
    for each layer:
        h = LayerNorm(h + Dropout(O · Attention(Q h, K h, V h)))
        h = LayerNorm(h + Dropout(W2 · act(W1 h)))

The attention mechanism itself (softmax over all keys, or an efficient approximation) comes
from the `nanoft.attention` registry and sees `(batch, heads, seq, head_dim)` tensors only.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.config import ModelConfig


def activation_fn(name: str):
    """The activation a checkpoint was trained with (HF's 'gelu' is the exact erf form)."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    if name == "tanh":
        return torch.tanh
    raise ValueError(f"unknown activation {name!r}")


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = (nn.Embedding(config.type_vocab_size, config.hidden_size)
                           if config.type_vocab_size > 0 else None)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0..T-1, or for RoBERTa offset+0..offset+T-1 over real tokens with pad positions for padding."""
        offset = self.config.position_offset
        if offset == 0:
            return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        is_token = (input_ids != self.config.pad_token_id).long()
        return torch.cumsum(is_token, dim=1) * is_token + self.config.pad_token_id

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_length:
            raise ValueError(f"input of {seq_len} tokens is longer than the model's {self.config.max_length} "
                             f"positions; truncate it or load with max_length={seq_len} to extend positions")
        x = self.word(input_ids) + self.position(self.position_ids(input_ids))
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Projections around an attention `core` chosen by name from the registry."""

    def __init__(self, config: ModelConfig, core: nn.Module) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.output = nn.Linear(h, h)
        self.core = core

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        out = self.core(q, k, v, key_padding_mask=key_padding_mask)  # (batch, heads, seq, head_dim)
        return self.output(out.transpose(1, 2).reshape(b, t, h))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation_fn(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.act(self.intermediate(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, core: nn.Module) -> None:
        super().__init__()
        self.attention = SelfAttention(config, core)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, key_padding_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


def build_attention_core(config: ModelConfig) -> nn.Module:
    """A new attention module of the kind and options `config` names (one per layer)."""
    from nanoft import attention

    return attention.build(config.attention, num_heads=config.num_heads, head_dim=config.head_dim,
                           max_length=config.max_length, dropout=config.attention_dropout,
                           **config.attention_options)


def key_padding_mask_of(attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(batch, seq) bool, True at padding, from a 1/0 attention mask; None when there is none to mask.

    A CPU batch without padding drops its mask so that SDPA takes its fastest path; reading a CPU
    tensor costs nothing. A mask on an accelerator is kept as it is: looking at it would make the
    host wait for the device on every batch, and every attention kind handles a mask that masks
    nothing exactly.
    """
    if attention_mask is None:
        return None
    key_padding_mask = attention_mask == 0
    if key_padding_mask.device.type == "cpu" and not bool(key_padding_mask.any()):
        return None
    return key_padding_mask


class Encoder(nn.Module):
    """Embeddings and the stack of layers; returns the last hidden state `(batch, seq, hidden)`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, build_attention_core(config))
                                    for _ in range(config.num_layers))
        self.gradient_checkpointing = False

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        key_padding_mask = key_padding_mask_of(attention_mask)  # (batch, seq), True = padding
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, key_padding_mask, use_reentrant=False)
            else:
                x = layer(x, key_padding_mask)
        return x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> Tuple[int, int]:
    """(total, trainable) parameter counts; a tensor shared by two modules (tied embeddings) counts once."""
    total = trainable = 0
    for p in module.parameters():  # parameters() yields each shared tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


__all__ = ["Embeddings", "SelfAttention", "FeedForward", "EncoderLayer", "Encoder", "init_weights",
           "activation_fn", "count_parameters"]
