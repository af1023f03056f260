"""One post-LayerNorm transformer encoder for BERT, RoBERTa and DistilBERT.

    embeddings = LayerNorm(word[ids] + position[pos] + token_type[types])
    for each layer:
        h = LayerNorm(h + Dropout(O · Attention(Q h, K h, V h)))
        h = LayerNorm(h + Dropout(W2 · act(W1 h)))

The attention mechanism itself (softmax over all keys, or an efficient approximation) comes
from the `nanoft.attention` registry and sees `(batch, heads, seq, head_dim)` tensors.

Unpadded (`ModelConfig.unpad`, full attention): the pad tokens are dropped once, after the position
and token-type ids are known, and every embedding lookup, linear, LayerNorm, dropout and activation
runs on `(total_tokens, hidden)`; attention goes through `nanoft.kernels.varlen_attention` with the
sequences' offsets. `Packing` records where each real token came from, so a head gets back exactly
the rows it reads ([CLS] rows, masked-LM positions) and `forward` the padded hidden state.

Document mask (`document_ids`, for packed masked-LM blocks): each document of a row becomes its own
packed sequence, so attention never crosses documents, and positions restart at each document: every
document is encoded exactly as if it were run alone, at no cost over the unpadded path (no (n, n) mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.config import ModelConfig
from nanoft.errors import ConfigError


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

    def position_ids(self, input_ids: torch.Tensor, document_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """0..T-1, or for RoBERTa offset+0..offset+T-1 over real tokens with pad positions for padding.
        With `document_ids` (batch, seq), positions restart at each document's first token."""
        offset = self.config.position_offset
        if document_ids is not None:
            index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            starts = document_starts(document_ids)  # (batch, seq) True at each document's first token
            positions = index - torch.cummax(torch.where(starts, index, 0), dim=1).values
            if offset == 0:
                return positions
            is_token = input_ids != self.config.pad_token_id
            return torch.where(is_token, positions + offset, self.config.pad_token_id)
        if offset == 0:
            return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        is_token = (input_ids != self.config.pad_token_id).long()
        return torch.cumsum(is_token, dim=1) * is_token + self.config.pad_token_id

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                packing: Optional["Packing"] = None, document_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(batch, seq, hidden), or with `packing` (total_tokens, hidden): ids, positions and token types
        are found on the padded (batch, seq) layout, then only the real tokens are looked up."""
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_length:
            raise ValueError(f"input of {seq_len} tokens is longer than the model's {self.config.max_length} "
                             f"positions; truncate it or load with max_length={seq_len} to extend positions")
        positions = self.position_ids(input_ids, document_ids)  # (batch or 1, seq)
        if self.token_type is not None and token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if packing is not None:  # (batch, seq) -> (total_tokens,)
            input_ids, positions = packing.pack(input_ids), packing.pack(positions.expand_as(input_ids))
            token_type_ids = packing.pack(token_type_ids) if self.token_type is not None else None
        x = self.word(input_ids) + self.position(positions)
        if self.token_type is not None:
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

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                packing: Optional["Packing"] = None) -> torch.Tensor:
        if packing is not None:  # x: (total_tokens, hidden) -> (total_tokens, heads, head_dim)
            n, h = x.shape
            q, k, v = (proj(x).view(n, self.num_heads, self.head_dim) for proj in (self.query, self.key, self.value))
            out = self.core.varlen(q, k, v, packing.cu_seqlens, packing.seq)  # (total_tokens, heads, head_dim)
            return self.output(out.reshape(n, h))
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

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                packing: Optional["Packing"] = None) -> torch.Tensor:
        """x: (batch, seq, hidden) with `key_padding_mask`, or (total_tokens, hidden) with `packing`."""
        x = self.attention_norm(x + self.dropout(self.attention(x, key_padding_mask, packing)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


def build_attention_core(config: ModelConfig) -> nn.Module:
    """A new attention module of the kind and options `config` names (one per layer)."""
    from nanoft import attention

    return attention.build(config.attention, num_heads=config.num_heads, head_dim=config.head_dim,
                           max_length=config.max_length, dropout=config.attention_dropout,
                           **config.attention_options)


def key_padding_mask_of(attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(batch, seq) bool, True at padding, from a 1/0 attention mask; None when there is no mask.

    The mask is never read on the host, on any device: looking at it on an accelerator makes the host
    wait for the device on every batch, and every attention kind handles a mask that masks nothing
    exactly. (On CPU, SDPA with an all-False mask measured as fast as without one.)
    """
    return None if attention_mask is None else attention_mask == 0


def unpad_by_default(device: torch.device, dtype: torch.dtype, head_dim: int = 64) -> bool:
    """What `ModelConfig.unpad=None` does on `device` for activations of `dtype` (and heads of `head_dim`).

    CPU: UNPAD_CPU_DEFAULT, decided by bench/results/unpad_cpu.md. CUDA: on when packed attention runs in
    the Triton varlen kernel (fp16/bf16, head_dim 32/64/128, triton installed), as MosaicBERT and ModernBERT
    unpad; not yet measured here (issue #17's GPU figures are pending: bench/gpu_issue17.sh). Elsewhere off.
    """
    if device.type == "cpu":
        return UNPAD_CPU_DEFAULT
    if device.type == "cuda":
        from nanoft.kernels import triton_available
        from nanoft.kernels.checks import TRITON_DTYPES, TRITON_HEAD_DIMS

        return dtype in TRITON_DTYPES and head_dim in TRITON_HEAD_DIMS and triton_available()
    return False


def document_starts(document_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool, True where a new document begins: at position 0 and where the id changes."""
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return starts


# Measured (bench/results/unpad_cpu.md: MiniLM training steps on the same batches, steps interleaved, three runs):
# random batches of 32 (SST-2 69% padding, AG News 58%) train 1.9-2.5x / 1.4-2.1x faster unpadded; length-
# bucketed ones (3-4% padding, nothing to drop) within noise of the padded path (0.96-1.04x, mean 1.01 over
# 12 rows, fp32 and bf16). Faster or equal everywhere measured, so on.
UNPAD_CPU_DEFAULT = True


@dataclass
class Packing:
    """Where the real tokens of a padded `(batch, seq)` batch sit once packed into `(total_tokens,)`.

    Tokens keep their order, row by row, so sequence b owns packed rows cu_seqlens[b]:cu_seqlens[b+1].
    `seq` (the padded width) is the longest-sequence bound handed to the kernels: it is known without
    reading the mask back from the device.
    """
    indices: torch.Tensor     # (total_tokens,) flat positions in (batch * seq) of the real tokens, ascending
    cu_seqlens: torch.Tensor  # (sequences + 1,) int32 offsets of each sequence in the packed order
    batch: int
    seq: int
    # With documents: (batch,) packed row of each batch row's first token (cu_seqlens then marks documents)
    row_starts: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, attention_mask: torch.Tensor, document_ids: Optional[torch.Tensor] = None) -> "Packing":
        """From a (batch, seq) 1/0 mask. The number of real tokens sizes every packed tensor, so finding the
        indices is the one point where an unpadded forward waits for the device (once, not once per layer).
        With `document_ids` (batch, seq), every document of a row is a sequence of its own (one more wait:
        the number of documents)."""
        batch, seq = attention_mask.shape
        real = attention_mask != 0  # (batch, seq)
        lengths = real.sum(dim=1, dtype=torch.int32)
        cu_seqlens = F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
        indices = torch.nonzero(real.reshape(-1)).squeeze(1)  # (total_tokens,)
        if document_ids is None:
            return cls(indices, cu_seqlens, batch, seq)
        starts = document_starts(document_ids.to(attention_mask.device)).reshape(-1).index_select(0, indices)
        total = torch.tensor([indices.numel()], device=indices.device)
        doc_cu = torch.cat([torch.nonzero(starts).squeeze(1), total]).to(torch.int32)  # (documents + 1,)
        return cls(indices, doc_cu, batch, seq, row_starts=cu_seqlens[:-1].long())

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, ...) -> (total_tokens, ...)."""
        return x.reshape(self.batch * self.seq, *x.shape[2:]).index_select(0, self.indices)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(total_tokens, ...) -> (batch, seq, ...), zeros at padding."""
        out = x.new_zeros(self.batch * self.seq, *x.shape[1:]).index_copy(0, self.indices, x)
        return out.view(self.batch, self.seq, *x.shape[1:])

    def first_rows(self) -> torch.Tensor:
        """(batch,) packed row of each sequence's first token ([CLS] / <s> when position 0 is real)."""
        return self.cu_seqlens[:-1].long() if self.row_starts is None else self.row_starts

    def rows_of(self, flat_positions: torch.Tensor) -> torch.Tensor:
        """Packed rows of real-token positions given as flat indices into (batch * seq)."""
        return torch.searchsorted(self.indices, flat_positions.contiguous())


class Encoder(nn.Module):
    """Embeddings and the stack of layers; returns the last hidden state `(batch, seq, hidden)`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, build_attention_core(config))
                                    for _ in range(config.num_layers))
        self.gradient_checkpointing = False

    def unpads(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
               every_position: bool = True, document_ids: Optional[torch.Tensor] = None) -> bool:
        """Whether this call runs unpadded: a mask to unpad by, every layer's attention able to take packed
        tokens, and `config.unpad`. None (auto) is a pure speed choice that never changes what is returned:
        it unpads only when the caller returns no output at padding (`every_position=False`: a sequence
        head, masked-LM positions), and then where `unpad_by_default` says it is faster. A document mask
        always runs unpadded: its documents are the packed sequences."""
        varlen = all(layer.attention.core.supports_varlen for layer in self.layers)
        if document_ids is not None:
            if not varlen:
                raise ConfigError(f"the document mask needs full attention, not {self.config.attention!r}",
                                  fix="drop --attention or --document-mask")
            return True
        if attention_mask is None or not varlen:
            return False
        if self.config.unpad is not None:
            return self.config.unpad
        if every_position:
            return False
        device = input_ids.device
        dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                 else self.embeddings.word.weight.dtype)
        return unpad_by_default(device, dtype, self.config.head_dim)

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
               token_type_ids: Optional[torch.Tensor] = None, every_position: bool = True,
               document_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[Packing]]:
        """(last hidden state, None) padded, `(batch, seq, hidden)`; or unpadded (`unpads`) the packed
        `(total_tokens, hidden)` state and its `Packing`. `every_position`: the caller returns an output at
        every position, padding included (see `unpads`). `document_ids` (batch, seq): the document of each
        token; attention stays within documents and positions restart at each (the document mask)."""
        packing = None
        if self.unpads(input_ids, attention_mask, every_position, document_ids):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            packing = Packing.of(attention_mask, document_ids)
        key_padding_mask = None if packing is not None else key_padding_mask_of(attention_mask)  # True = padding
        x = self.embeddings(input_ids, token_type_ids, packing, document_ids)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, key_padding_mask, packing, use_reentrant=False)
            else:
                x = layer(x, key_padding_mask, packing)
        return x, packing

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None,
                document_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The last hidden state `(batch, seq, hidden)`; unpadded, zeros at padding."""
        x, packing = self.encode(input_ids, attention_mask, token_type_ids, document_ids=document_ids)
        return x if packing is None else packing.unpack(x)


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


__all__ = ["Embeddings", "SelfAttention", "FeedForward", "EncoderLayer", "Encoder", "Packing", "init_weights",
           "document_starts",
           "activation_fn", "count_parameters", "unpad_by_default"]
