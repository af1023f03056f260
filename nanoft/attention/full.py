"""Full softmax attention, O(n^2): the reference every efficient kind is compared against.

It adds no math of its own; it hands q, k, v to `nanoft.kernels.attention`, which picks the
fused Triton kernel on CUDA and torch SDPA on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from nanoft import kernels
from nanoft.attention.base import check_inputs, default_scale


@dataclass
class FullOptions:
    """Full attention has no options of its own."""


class FullAttention(nn.Module):
    """softmax(q k^T * scale) v over all non-padded keys."""

    Options = FullOptions

    def __init__(self, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
                 scale: Optional[float] = None) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.max_length = num_heads, head_dim, max_length
        self.dropout = dropout
        self.scale = default_scale(head_dim, scale)
        self.options = FullOptions()

    def reset_parameters(self) -> None:
        """Nothing to initialise; present so every kind can be reset the same way."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(q, k, v, key_padding_mask, self.num_heads)
        return kernels.attention(q, k, v, key_padding_mask=key_padding_mask,
                                 dropout_p=self.dropout if self.training else 0.0, scale=self.scale)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, dropout={self.dropout}"
