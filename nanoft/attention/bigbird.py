"""BigBird attention (Zaheer et al., 2020): block-sparse window + global + random blocks.

The sequence is cut into blocks of `block_size`. A query block attends to the first
`num_global_blocks` blocks, to `num_window_blocks` blocks centred on itself and to
`num_random_blocks` other blocks picked at random; the global blocks attend to everything.
Each query block gathers only its key blocks, so memory is O(n), never n x n.

The random layout is fixed per module: a persistent buffer holds, per head and query block, a
random priority for every key block, and a query block takes the highest-priority blocks not
already in its window or among the globals. Priorities for max_length blocks are stored, so any
shorter input reads a consistent layout and a checkpoint reproduces it exactly. An input so short
that its n x n scores are no larger than the gathered blocks is scored densely under the block mask
of the same layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nanoft.attention.base import (SparseAttentionCore, dense_masked_attention, key_is_valid, make_generator,
                                   require, softmax_attention)


@dataclass
class BigBirdOptions:
    """BigBird's options."""

    block_size: int = field(default=64, metadata={"help": "tokens per block"})
    num_window_blocks: int = field(default=3, metadata={
        "help": "odd: a query block sees its own block and (num - 1) / 2 blocks on each side"})
    num_global_blocks: int = field(default=1, metadata={"help": "blocks at the start with global attention"})
    num_random_blocks: int = field(default=3, metadata={"help": "random key blocks per query block"})
    seed: Optional[int] = field(default=None, metadata={"help": "seed of the random layout (None: torch's global RNG)"})

    def __post_init__(self) -> None:
        require(isinstance(self.block_size, int) and self.block_size > 0, "bigbird",
                f"block_size must be a positive int, got {self.block_size!r}", "pass e.g. block_size=64")
        require(isinstance(self.num_window_blocks, int) and self.num_window_blocks > 0
                and self.num_window_blocks % 2 == 1, "bigbird",
                f"num_window_blocks must be a positive odd int, got {self.num_window_blocks!r}",
                "pass e.g. num_window_blocks=3")
        for name in ("num_global_blocks", "num_random_blocks"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, "bigbird", f"{name} must be an int >= 0, got {value!r}",
                    f"pass e.g. {name}=1")


class BigBirdAttention(SparseAttentionCore):
    """Block-sparse attention: global, sliding-window and random key blocks per query block."""

    Options = BigBirdOptions

    def __init__(self, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
                 scale: Optional[float] = None, options: Optional[BigBirdOptions] = None, **overrides: Any) -> None:
        super().__init__(num_heads, head_dim, max_length, dropout, scale, options, **overrides)
        max_blocks = -(-max_length // self.options.block_size)
        # (heads, query block, key block): a random permutation of priorities per row.
        self.register_buffer("random_priority", torch.empty(num_heads, max_blocks, max_blocks, dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw a new random layout (from `seed` if set)."""
        heads, rows, cols = self.random_priority.shape
        noise = torch.rand(heads, rows, cols, generator=make_generator(self.options.seed))
        self.random_priority.copy_(noise.argsort(dim=-1))

    def layout(self, blocks: int) -> Tuple[Tensor, Tensor]:
        """Key blocks of each non-global query block: indices and validity, (heads, queries, slots).

        Slots are [global blocks | window blocks | random blocks]; a window slot that falls off the
        ends or onto a global block, or a random slot with no block left to pick, is invalid.
        """
        o = self.options
        device = self.random_priority.device
        heads = self.num_heads
        g = min(o.num_global_blocks, blocks)
        rows = torch.arange(g, blocks, device=device)  # non-global query blocks
        half = o.num_window_blocks // 2
        glob_idx = torch.arange(g, device=device).expand(len(rows), g)
        win_idx = rows[:, None] + torch.arange(-half, half + 1, device=device)  # (queries, window)
        win_ok = (win_idx >= g) & (win_idx < blocks)
        win_idx = win_idx.clamp(0, blocks - 1)

        cols = torch.arange(blocks, device=device)
        taken = (cols < g) | ((cols - rows[:, None]).abs() <= half)  # (queries, blocks): global or window
        priority = self.random_priority[:, g:blocks, :blocks].masked_fill(taken, -1)  # (heads, queries, blocks)
        r = min(o.num_random_blocks, blocks)
        top, rand_idx = priority.topk(r, dim=-1)  # (heads, queries, r)
        rand_ok = top >= 0

        idx = torch.cat([glob_idx.expand(heads, -1, -1), win_idx.expand(heads, -1, -1), rand_idx], dim=-1)
        ok = torch.cat([torch.ones_like(glob_idx, dtype=torch.bool).expand(heads, -1, -1),
                        win_ok.expand(heads, -1, -1), rand_ok], dim=-1)
        return idx, ok  # (heads, queries, slots)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_inputs(q, k, v, key_padding_mask)
        batch, heads, n, dim = q.shape
        self.check_length(n)
        bs = self.options.block_size
        blocks = -(-n // bs)
        n_pad = blocks * bs
        g = min(self.options.num_global_blocks, blocks)
        valid = F.pad(key_is_valid(key_padding_mask, batch, n, q.device), (0, n_pad - n), value=False)
        q = q * self.scale  # scaling q (n x d) is cheaper than scaling scores, forward and backward
        q, k, v = (F.pad(t, (0, 0, 0, n_pad - n)) for t in (q, k, v))  # (batch, heads, n_pad, dim)

        if g == blocks:  # every query block is global
            return self._global_queries(q, k, v, valid)[:, :, :n]
        idx, ok = self.layout(blocks)  # (heads, queries, slots)
        queries, slots = idx.shape[1:]
        if self.prefers_dense(n_pad * n_pad, queries * bs * slots * bs + g * bs * n_pad):  # n x n vs gathered blocks
            return self._dense(q, k, v, valid, self._pattern(idx, ok, g, blocks).to(q.device))[:, :, :n]
        out_global = self._global_queries(q[:, :, : g * bs], k, v, valid)  # (batch, heads, g * bs, dim)
        head = torch.arange(heads, device=q.device)[:, None, None]
        k_sel = k.view(batch, heads, blocks, bs, dim)[:, head, idx]  # (batch, heads, queries, slots, bs, dim)
        v_sel = v.view(batch, heads, blocks, bs, dim)[:, head, idx]
        k_sel = k_sel.reshape(batch, heads, queries, slots * bs, dim)
        v_sel = v_sel.reshape(batch, heads, queries, slots * bs, dim)
        key_ok = valid.view(batch, blocks, bs)[:, idx] & ok[None, :, :, :, None]  # (batch, heads, queries, slots, bs)
        key_ok = key_ok.reshape(batch, heads, queries, 1, slots * bs)

        q_blocks = q[:, :, g * bs:].reshape(batch, heads, queries, bs, dim)
        scores = q_blocks @ k_sel.transpose(-2, -1)  # (batch, heads, queries, bs, slots * bs)
        out_sparse = softmax_attention(scores, key_ok, v_sel, self.dropout, self.training)
        out_sparse = out_sparse.reshape(batch, heads, queries * bs, dim)
        return torch.cat([out_global, out_sparse], dim=2)[:, :, :n]

    def block_mask(self, idx: Tensor, ok: Tensor, g: int, blocks: int) -> Tensor:
        """(heads, blocks, blocks) bool: may query block i attend to key block j under this layout?"""
        seen = (F.one_hot(idx, blocks).bool() & ok[..., None]).any(dim=-2)  # (heads, queries, blocks)
        glob_rows = torch.ones(idx.shape[0], g, blocks, dtype=torch.bool, device=idx.device)
        return torch.cat([glob_rows, seen], dim=1)

    def _pattern(self, idx: Tensor, ok: Tensor, g: int, blocks: int) -> Tensor:
        """(heads, n_pad, n_pad) bool: the block mask, token by token."""
        bs = self.options.block_size
        return self.block_mask(idx, ok, g, blocks).repeat_interleave(bs, dim=1).repeat_interleave(bs, dim=2)

    def _global_queries(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
        """Queries (already scaled) of the global blocks attend to every non-padded key."""
        return dense_masked_attention(q, k, v, valid[:, None, None, :], self.dropout, self.training)
