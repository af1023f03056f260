"""Longformer attention (Beltagy et al., 2020): a sliding window plus a few global tokens.

Query i attends to keys j with |i - j| <= window, and to every global key; a global query
(e.g. [CLS] at position 0) attends to all keys. Memory is O(n * window), never n x n: queries
are cut into blocks of c >= window positions and each block is scored against the band of
c + 2 * window keys around it (the sliding-chunks trick), read as strided views of the
padded keys. Global keys are scored as extra columns of the same softmax, and are left out of
the band so no key is counted twice. An input short enough that its n x n scores are no larger
than the bands (n up to about 2 * window) is scored densely under the same window mask instead.

On CUDA, when the global tokens are a prefix (the default [CLS] at 0), the fused Triton
sliding-window kernel of `nanoft.kernels` computes the same attention without the bands.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nanoft import kernels
from nanoft.attention.base import (SparseAttentionCore, dense_masked_attention, key_is_valid, require,
                                   softmax_attention)

MIN_BLOCK = 32  # tiny windows still score queries in blocks of at least this many


def query_block(window: int, n: int) -> int:
    """Queries per block of the banded form: the window, at least MIN_BLOCK, at most the input."""
    return min(max(window, MIN_BLOCK), n)


@dataclass
class LongformerOptions:
    """Longformer's options."""

    window: int = field(default=256, metadata={"help": "keys on each side of a query"})
    global_positions: Tuple[int, ...] = field(default=(0,), metadata={
        "help": "positions with global attention (they see, and are seen by, every token)"})

    def __post_init__(self) -> None:
        require(isinstance(self.window, int) and self.window >= 0, "longformer",
                f"window must be an int >= 0, got {self.window!r}", "pass e.g. window=256")
        positions = tuple(self.global_positions)
        require(all(isinstance(p, int) and p >= 0 for p in positions), "longformer",
                f"global_positions must be ints >= 0, got {self.global_positions!r}",
                "pass e.g. global_positions=(0,)")
        self.global_positions = tuple(sorted(set(positions)))


class LongformerAttention(SparseAttentionCore):
    """Sliding-window attention with global tokens, in O(n * window) memory."""

    Options = LongformerOptions

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_inputs(q, k, v, key_padding_mask)
        batch, heads, n, dim = q.shape
        w = min(self.options.window, n - 1)
        positions = [p for p in self.options.global_positions if p < n]
        if self._fused_ok(q, key_padding_mask):
            return self._fused(q, k, v, key_padding_mask, w, len(positions))
        valid = key_is_valid(key_padding_mask, batch, n, q.device)  # (batch, seq)
        glob = torch.tensor(positions, dtype=torch.long, device=q.device)  # (globals,)
        q = q * self.scale  # scaling q (n x d) is cheaper than scaling scores, forward and backward
        c = query_block(w, n)
        if self.prefers_dense(n * n, -(-n // c) * c * (c + 2 * w)):  # n x n scores vs the bands
            return self._dense(q, k, v, valid, self._pattern(n, glob, w))
        out = self._banded(q, k, v, valid, glob, w)
        if glob.numel() > 0:  # global queries attend to every non-padded key
            out_glob = dense_masked_attention(q[:, :, glob], k, v, valid[:, None, None, :], self.dropout,
                                              self.training)  # (batch, heads, globals, dim)
            out = out.index_copy(2, glob, out_glob)
        return out

    def _fused_ok(self, q: Tensor, key_padding_mask: Optional[Tensor]) -> bool:
        """Whether the Triton sliding-window kernel computes exactly this attention: the kernels take these
        inputs (`kernels.triton_eligible`) and the global tokens are a prefix (positions 0..G-1), the only
        layout the kernel supports; anything else takes the chunked torch path."""
        positions = self.options.global_positions
        return positions == tuple(range(len(positions))) and kernels.triton_eligible(q, key_padding_mask)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], w: int,
               num_global: int) -> Tensor:
        """The same attention through the fused Triton kernel (global tokens = the first num_global)."""
        return kernels.attention(q, k, v, key_padding_mask=key_padding_mask, window=w, num_global=num_global,
                                 dropout_p=self.dropout if self.training else 0.0, scale=self.scale, impl="triton",
                                 validate=False)

    @staticmethod
    def _pattern(n: int, glob: Tensor, w: int) -> Tensor:
        """(n, n) bool: may query i see key j? Within the window, or either of them global."""
        pos = torch.arange(n, device=glob.device)
        is_global = torch.zeros(n, dtype=torch.bool, device=glob.device)
        is_global[glob] = True
        band = (pos[:, None] - pos[None, :]).abs() <= w  # (n, n)
        return band | is_global[:, None] | is_global[None, :]

    def _banded(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor, glob: Tensor, w: int) -> Tensor:
        """Every (already scaled) query against its window of non-global keys plus all global keys."""
        batch, heads, n, dim = q.shape
        c = query_block(w, n)
        blocks = -(-n // c)
        n_pad = blocks * c
        span = c + 2 * w  # keys seen by one query block
        is_global = torch.zeros(n, dtype=torch.bool, device=q.device)
        is_global[glob] = True
        # Pad keys by w in front and w (plus block padding) behind, then view overlapping bands.
        k_band = F.pad(k, (0, 0, w, n_pad - n + w)).unfold(2, span, c)  # (batch, heads, blocks, dim, span)
        v_band = F.pad(v, (0, 0, w, n_pad - n + w)).unfold(2, span, c)  # (batch, heads, blocks, dim, span)
        key_ok = F.pad(valid & ~is_global, (w, n_pad - n + w), value=False)
        key_ok = key_ok.unfold(1, span, c)  # (batch, blocks, span)
        q_blocks = F.pad(q, (0, 0, 0, n_pad - n)).view(batch, heads, blocks, c, dim)
        # Query r of a block and key slot s of its band are s - w - r positions apart.
        offset = torch.arange(span, device=q.device)[None, :] - torch.arange(c, device=q.device)[:, None]
        in_window = (offset >= 0) & (offset <= 2 * w)  # (c, span)
        band_ok = in_window & key_ok[:, None, :, None, :]  # (batch, 1, blocks, c, span)

        # Global keys join every band as extra columns of the same softmax.
        k_glob = k[:, :, glob].transpose(-2, -1).unsqueeze(2).expand(-1, -1, blocks, -1, -1)  # (.., blocks, dim, g)
        v_glob = v[:, :, glob].unsqueeze(2).expand(-1, -1, blocks, -1, -1)  # (batch, heads, blocks, g, dim)
        keys = torch.cat([k_band, k_glob], dim=-1)  # (batch, heads, blocks, dim, span + g)
        values = torch.cat([v_band.transpose(-2, -1), v_glob], dim=-2)  # (batch, heads, blocks, span + g, dim)
        glob_ok = valid[:, glob][:, None, None, None, :].expand(-1, -1, blocks, c, -1)  # (batch, 1, blocks, c, g)
        allowed = torch.cat([band_ok, glob_ok], dim=-1)  # (batch, 1, blocks, c, span + g)

        scores = q_blocks @ keys  # (batch, heads, blocks, c, span + g)
        out = softmax_attention(scores, allowed, values, self.dropout, self.training)  # (batch, heads, blocks, c, dim)
        return out.reshape(batch, heads, n_pad, dim)[:, :, :n]  # (batch, heads, seq, dim)
