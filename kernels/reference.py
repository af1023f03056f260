"""Plain-PyTorch attention: the ground truth every fused kernel is tested against.

It materialises the full (seq_q, seq_k) score matrix, so it is slow and memory-hungry, but each
step is one readable line. Masks follow the project convention: `key_padding_mask` is True where a
key is padding; the boolean masks built here are True where attention is *allowed* (SDPA's
convention), so they can be handed to `scaled_dot_product_attention` unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def default_scale(head_dim: int, scale: Optional[float] = None) -> float:
    """The softmax temperature: 1/sqrt(head_dim) unless given."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def allowed_mask(seq_q: int, seq_k: int, *, key_padding_mask: Optional[torch.Tensor] = None,
                 window: Optional[int] = None, num_global: int = 0, causal: bool = False,
                 device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """Boolean mask, True where query i may attend to key j; None when everything is allowed.

    Shape (batch, 1, seq_q, seq_k) with padding, else (seq_q, seq_k). `window` = w keeps |i - j| <= w;
    the first `num_global` positions attend to all keys and are attended by all queries.
    """
    if key_padding_mask is None and window is None and not causal:
        return None
    i = torch.arange(seq_q, device=device)[:, None]  # (seq_q, 1)
    j = torch.arange(seq_k, device=device)[None, :]  # (1, seq_k)
    keep = torch.ones(seq_q, seq_k, dtype=torch.bool, device=device)
    if window is not None:
        keep = (i - j).abs() <= window
        if num_global > 0:
            keep = keep | (i < num_global) | (j < num_global)
    if causal:
        keep = keep & (j <= i)
    if key_padding_mask is not None:
        keep = keep[None, None] & ~key_padding_mask[:, None, None, :].to(device)  # (batch, 1, seq_q, seq_k)
    return keep


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: Optional[torch.Tensor] = None, window: Optional[int] = None,
                        dropout_p: float = 0.0, causal: bool = False, scale: Optional[float] = None,
                        *, num_global: int = 0, dropout_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, computed in float32 and cast back to q's dtype.

    `dropout_mask` (bool, broadcastable to (batch, heads, seq_q, seq_k), True = keep) replaces torch's
    own dropout so a test can apply exactly the mask a kernel drew; kept probabilities are scaled by
    1 / (1 - dropout_p). Query rows with no allowed key produce NaN, as a softmax over nothing does.
    """
    scale = default_scale(q.shape[-1], scale)
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (batch, heads, seq_q, seq_k)
    keep = allowed_mask(q.shape[-2], k.shape[-2], key_padding_mask=key_padding_mask, window=window,
                        num_global=num_global, causal=causal, device=q.device)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_mask is not None:
        probs = probs * dropout_mask / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return (probs @ v.float()).to(q.dtype)
