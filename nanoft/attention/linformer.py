"""Linformer (Wang et al., 2020): attend to k learned mixtures of the keys instead of all n keys.

Keys and values are projected along the sequence, K' = E K and V' = F V with E, F of shape
(k, max_length), so attention costs O(n k) instead of O(n^2). A sequence shorter than
max_length uses the first n columns of E and F. Padded keys and values are zeroed before the
projection, so padding adds nothing to any projected row.

Init ("pooling", the default): row j of E and F averages the j-th of k equal segments of the
max_length positions, so a projected key is the mean of a few neighbouring keys and the attention
of a converted pretrained model starts as a coarse-grained version of the original, which
fine-tuning then refines. "random": N(0, 1/k) entries, the Johnson-Lindenstrauss projection of
the paper; it preserves inner products on average but mixes every token into every row, which
erases a pretrained model's attention patterns (IMDB fine-tuning from it stayed at chance).

With pooling, a row whose segment holds no real key of the input (beyond a short input, or all
padding) is left out of the softmax instead of acting as a zero key.

projection="adaptive": no learned E and F; each sequence's own real length L is cut into k equal segments
(row j averages the positions i < L with i * k // L == j), the paper's mean-pooling projection sized to the
input. A sequence of at most k tokens keeps every key (exact attention); a longer one pools L / k neighbours
per row. With the fixed (k, max_length) projection a 300-token review at max_length 2048, k 256 is pooled 8
to a row like the start of a 2,048-token one, and a converted MiniLM's last layer starts 0.87 away (relative
error) from the checkpoint's on IMDB texts; bench/results/convert_imdb.md measures both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from nanoft.attention.base import AttentionCore, require, softmax_attention


@dataclass
class LinformerOptions:
    """Linformer's options (see the module docstring for the two inits)."""

    k: int = field(default=256, metadata={"help": "projected length: keys and values are mixed into k rows"})
    share_kv: bool = field(default=False, metadata={"help": "one projection for keys and values"})
    headwise: bool = field(default=False, metadata={"help": "a projection per head instead of one for all"})
    init: str = field(default="pooling", metadata={
        "help": "pooling (segment means, keeps a converted model's attention) or random (N(0, 1/k))"})
    projection: str = field(default="learned", metadata={
        "help": "learned (E, F of shape (k, max_length), the paper's) or adaptive (no parameters: each "
                "sequence's real length pooled into k segments; exact up to k tokens)"})

    def __post_init__(self) -> None:
        require(isinstance(self.k, int) and self.k > 0, "linformer", f"k must be a positive int, got {self.k!r}",
                "pass e.g. k=256")
        require(self.init in ("pooling", "random"), "linformer", f"unknown init {self.init!r}",
                "use init=pooling or init=random")
        require(self.projection in ("learned", "adaptive"), "linformer", f"unknown projection {self.projection!r}",
                "use projection=learned or projection=adaptive")


def segment_of(n: int, k: int, max_length: int, device: Optional[torch.device] = None) -> Tensor:
    """(n,): the pooling row of each of the first n positions, i * k // max_length."""
    return torch.arange(n, device=device) * k // max_length


def segment_means(k: int, length: int) -> Tensor:
    """(k, length): row j averages the positions i with i * k // length == j, about length / k neighbours
    (k >= length: every position gets a row of its own and the other rows stay empty)."""
    segment = segment_of(length, k, length)  # the row each position belongs to
    weights = torch.zeros(k, length)
    weights[segment, torch.arange(length)] = 1.0
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


def adaptive_pooling(key_padding_mask: Optional[Tensor], batch: int, n: int, k: int,
                     device: torch.device) -> Tuple[Tensor, Tensor]:
    """Per sequence, its real length L cut into k segments: the (batch, 1, k, n) averaging matrix (padding
    columns zero) and the (batch, 1, 1, k) rows that hold a real key (all k once L >= k)."""
    real = (torch.ones(batch, n, dtype=torch.bool, device=device) if key_padding_mask is None
            else ~key_padding_mask)  # (batch, n)
    lengths = real.sum(dim=1, keepdim=True).clamp(min=1)  # (batch, 1)
    rank = real.long().cumsum(dim=1) - 1  # (batch, n): index of each real token among the real ones
    row_of = rank.clamp(min=0) * k // lengths  # (batch, n): each real token's row (padding anywhere)
    weights = torch.zeros(batch, k, n, device=device).scatter_(  # (batch, k, n): 1 at (row of i, i) for real i
        1, row_of.clamp(max=k - 1)[:, None, :], real[:, None, :].float())
    counts = weights.sum(dim=2, keepdim=True)  # (batch, k, 1)
    return (weights / counts.clamp(min=1.0))[:, None], (counts.squeeze(-1) > 0)[:, None, None, :]


class LinformerAttention(AttentionCore):
    """softmax(q (E k)^T * scale) (F v), with E, F learned (k, max_length) projections."""

    Options = LinformerOptions

    def __init__(self, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
                 scale: Optional[float] = None, options: Optional[LinformerOptions] = None, **overrides: Any) -> None:
        super().__init__(num_heads, head_dim, max_length, dropout, scale, options, **overrides)
        o = self.options
        groups = num_heads if o.headwise else 1
        learned = o.projection == "learned"
        self.proj_k = nn.Parameter(torch.empty(groups, o.k, max_length)) if learned else None  # E
        self.proj_v = nn.Parameter(torch.empty(groups, o.k, max_length)) if learned and not o.share_kv else None  # F
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Segment means or N(0, 1/k) entries, per `options.init` (see the module docstring)."""
        for proj in (self.proj_k, self.proj_v):
            if proj is None:
                continue
            if self.options.init == "random":
                nn.init.normal_(proj, std=1.0 / math.sqrt(self.options.k))
            else:
                with torch.no_grad():
                    proj.copy_(segment_means(self.options.k, self.max_length).to(proj))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_inputs(q, k, v, key_padding_mask)
        n = k.shape[2]
        self.check_length(n)
        if key_padding_mask is not None:  # zero padded rows so they are projected out
            keep = (~key_padding_mask)[:, None, :, None].to(k.dtype)  # (batch, 1, seq, 1)
            k, v = k * keep, v * keep
        if self.proj_k is None:  # projection="adaptive"
            proj, rows = adaptive_pooling(key_padding_mask, k.shape[0], n, self.options.k, k.device)
            proj = proj.to(k.dtype)  # (batch, 1, k, seq)
            scores = (q * self.scale) @ (proj @ k).transpose(-2, -1)  # (batch, heads, seq, k)
            return softmax_attention(scores, rows, proj @ v, self.dropout, self.training)
        proj_k = self.proj_k[:, :, :n].unsqueeze(0)  # (1, heads or 1, k, seq)
        proj_v = proj_k if self.proj_v is None else self.proj_v[:, :, :n].unsqueeze(0)
        k_low = proj_k.to(k.dtype) @ k  # (batch, heads, k, head_dim)
        v_low = proj_v.to(v.dtype) @ v  # (batch, heads, k, head_dim)
        scores = (q * self.scale) @ k_low.transpose(-2, -1)  # (batch, heads, seq, k)
        rows = None  # init=random: every row mixes every position
        if self.options.init == "pooling":  # a row whose segment holds no real key of this input is no key
            rows = self._rows_with_real_keys(key_padding_mask, k.shape[0], n, k.device)  # (batch, 1, 1, k)
        return softmax_attention(scores, rows, v_low, self.dropout, self.training)

    def _rows_with_real_keys(self, key_padding_mask: Optional[Tensor], batch: int, n: int,
                             device: torch.device) -> Tensor:
        """(batch, 1, 1, k) bool: does row j's pooling segment hold a real key of the input?"""
        real = torch.ones(batch, n, device=device) if key_padding_mask is None else (~key_padding_mask).float()
        row_of = segment_of(n, self.options.k, self.max_length, device)  # (n,): each position's row
        counts = torch.zeros(batch, self.options.k, device=device).index_add_(1, row_of, real)  # (batch, k)
        return (counts > 0)[:, None, None, :]
