"""Full softmax attention, O(n^2): the reference every efficient kind is compared against.

It adds no math of its own; it hands q, k, v to `nanoft.kernels.attention`, which picks the
fused Triton kernel on CUDA and torch SDPA on CPU.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from nanoft import kernels
from nanoft.attention.base import AttentionCore, NoOptions

FullOptions = NoOptions  # full attention has no options of its own


class FullAttention(AttentionCore):
    """softmax(q k^T * scale) v over all non-padded keys."""

    Options = FullOptions
    supports_varlen = True

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_inputs(q, k, v, key_padding_mask)
        return kernels.attention(q, k, v, key_padding_mask=key_padding_mask,
                                 dropout_p=self.dropout if self.training else 0.0, scale=self.scale, validate=False)

    def varlen(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
        """The same attention over packed sequences, (total_tokens, heads, head_dim): sequence b owns tokens
        cu_seqlens[b]:cu_seqlens[b+1]. The caller built cu_seqlens itself, so nothing is read back to check it."""
        return kernels.varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=self.scale, validate=False,
                                        dropout_p=self.dropout if self.training else 0.0)
