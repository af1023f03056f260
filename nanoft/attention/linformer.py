"""Linformer (Wang et al., 2020): attend to k learned mixtures of the keys instead of all n keys.

Keys and values are projected along the sequence, K' = E K and V' = F V with E, F of shape
(k, max_length), so attention costs O(n k) instead of O(n^2). A sequence shorter than
max_length uses the first n columns of E and F. Padded keys and values are zeroed before the
projection, so padding adds nothing to any projected row.

Init: entries of E and F are drawn from N(0, 1/k), the random projection of the paper's
Johnson-Lindenstrauss argument: it preserves inner products, E[(E x)^T (E y)] = x^T y, which
keeps projected keys and values at the scale of the original ones when the module is put into
a pretrained model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from nanoft.attention.base import (attention_dropout, check_inputs, check_length, default_scale, require,
                                   upcast)


@dataclass
class LinformerOptions:
    """k: projected length; share_kv: one projection for keys and values; headwise: one per head."""

    k: int = 256
    share_kv: bool = False
    headwise: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.k, int) and self.k > 0, "linformer", f"k must be a positive int, got {self.k!r}",
                "pass e.g. k=256")


class LinformerAttention(nn.Module):
    """softmax(q (E k)^T * scale) (F v), with E, F learned (k, max_length) projections."""

    Options = LinformerOptions

    def __init__(self, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
                 scale: Optional[float] = None, *, k: int = 256, share_kv: bool = False,
                 headwise: bool = False) -> None:
        super().__init__()
        self.options = LinformerOptions(k=k, share_kv=share_kv, headwise=headwise)
        self.num_heads, self.head_dim, self.max_length = num_heads, head_dim, max_length
        self.dropout = dropout
        self.scale = default_scale(head_dim, scale)
        groups = num_heads if headwise else 1
        self.proj_k = nn.Parameter(torch.empty(groups, k, max_length))  # E
        self.proj_v = None if share_kv else nn.Parameter(torch.empty(groups, k, max_length))  # F
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1/k) entries: a Johnson-Lindenstrauss random projection (see the module docstring)."""
        std = 1.0 / math.sqrt(self.options.k)
        nn.init.normal_(self.proj_k, std=std)
        if self.proj_v is not None:
            nn.init.normal_(self.proj_v, std=std)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(q, k, v, key_padding_mask, self.num_heads)
        n = k.shape[2]
        check_length("linformer", n, self.max_length)
        if key_padding_mask is not None:  # zero padded rows so they are projected out
            keep = (~key_padding_mask)[:, None, :, None].to(k.dtype)  # (batch, 1, seq, 1)
            k, v = k * keep, v * keep
        proj_k = self.proj_k[:, :, :n].unsqueeze(0)  # (1, heads or 1, k, seq)
        proj_v = proj_k if self.proj_v is None else self.proj_v[:, :, :n].unsqueeze(0)
        k_low = proj_k.to(k.dtype) @ k  # (batch, heads, k, head_dim)
        v_low = proj_v.to(v.dtype) @ v  # (batch, heads, k, head_dim)
        scores = (q * self.scale) @ k_low.transpose(-2, -1)  # (batch, heads, seq, k)
        probs = torch.softmax(upcast(scores), dim=-1)  # every projected row is a valid key
        probs = attention_dropout(probs, self.dropout, self.training)
        return probs.to(v_low.dtype) @ v_low

    def extra_repr(self) -> str:
        o = self.options
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, max_length={self.max_length}, "
                f"k={o.k}, share_kv={o.share_kv}, headwise={o.headwise}, dropout={self.dropout}")
