"""Performer / FAVOR+ (Choromanski et al., 2021): softmax attention through random features.

exp(q . k) = E_w[phi(q) . phi(k)] with positive features phi(x) = exp(w . x - |x|^2 / 2) / sqrt(m),
w ~ N(0, I). Replacing the softmax kernel by phi(Q) phi(K)^T lets the products be reassociated,
out = phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1), which is linear in n. The m directions w are drawn
in orthogonal blocks (lower variance than iid), and are a persistent buffer, so a checkpoint
reproduces its outputs; they are redrawn every `redraw_interval` training calls (0: never).

The softmax temperature is folded in by scaling q and k by sqrt(scale) each. Features are
computed in fp32 with the paper's stabiliser: the max log-feature is subtracted, per query for
queries and over all non-padded keys of a (batch, head) for keys; both factors cancel in the ratio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from nanoft.attention.base import check_inputs, default_scale, make_generator, require

FEATURE_EPS = 1e-6  # keeps every feature positive, as in the paper's reference code


def orthogonal_gaussian(num_features: int, dim: int, generator: Optional[torch.Generator]) -> Tensor:
    """(num_features, dim) rows with Gaussian norms, orthogonal within each block of `dim` rows."""
    blocks = []
    for start in range(0, num_features, dim):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append(q.T[: min(dim, num_features - start)])  # rows of q.T are orthonormal
    directions = torch.cat(blocks)  # (num_features, dim)
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return directions * norms  # each row marginally ~ N(0, I)


@dataclass
class PerformerOptions:
    """num_features: m random features; kernel: "softmax" (FAVOR+) or "relu"; redraw_interval:
    training calls between redraws (0: never); seed: None uses torch's global generator."""

    num_features: int = 256
    kernel: str = "softmax"
    redraw_interval: int = 0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        require(isinstance(self.num_features, int) and self.num_features > 0, "performer",
                f"num_features must be a positive int, got {self.num_features!r}", "pass e.g. num_features=256")
        require(self.kernel in ("softmax", "relu"), "performer", f"unknown kernel {self.kernel!r}",
                'use kernel="softmax" or kernel="relu"')
        require(isinstance(self.redraw_interval, int) and self.redraw_interval >= 0, "performer",
                f"redraw_interval must be an int >= 0, got {self.redraw_interval!r}", "use 0 to never redraw")


class PerformerAttention(nn.Module):
    """Linear-time attention with positive orthogonal random features (FAVOR+)."""

    Options = PerformerOptions

    def __init__(self, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
                 scale: Optional[float] = None, *, num_features: int = 256, kernel: str = "softmax",
                 redraw_interval: int = 0, seed: Optional[int] = None) -> None:
        super().__init__()
        self.options = PerformerOptions(num_features=num_features, kernel=kernel,
                                        redraw_interval=redraw_interval, seed=seed)
        self.num_heads, self.head_dim, self.max_length = num_heads, head_dim, max_length
        self.dropout = dropout
        self.scale = default_scale(head_dim, scale)
        self.register_buffer("features", torch.empty(num_features, head_dim))  # (m, head_dim)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # training calls so far
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the first set of features and restart the redraw schedule."""
        self.calls.zero_()
        self.redraw(0)

    def redraw(self, draw: int) -> None:
        """Replace the features by draw number `draw` (a new tensor: saved activations stay valid)."""
        o = self.options
        fresh = orthogonal_gaussian(o.num_features, self.head_dim, make_generator(o.seed, draw))
        self.features = fresh.to(device=self.features.device, dtype=self.features.dtype)

    def feature_map(self, x: Tensor, is_query: bool, key_valid: Optional[Tensor]) -> Tensor:
        """phi(x) in fp32: (batch, heads, seq, head_dim) -> (batch, heads, seq, m)."""
        x = x.float() * math.sqrt(self.scale)
        proj = x @ self.features.float().T  # (batch, heads, seq, m)
        m = proj.shape[-1]
        if self.options.kernel == "relu":
            phi = torch.relu(proj) / math.sqrt(m) + FEATURE_EPS
        else:
            logits = proj - 0.5 * (x * x).sum(dim=-1, keepdim=True)
            if is_query:
                top = logits.amax(dim=-1, keepdim=True)
            else:
                valid = key_valid[:, None, :, None]  # (batch, 1, seq, 1)
                top = logits.masked_fill(~valid, float("-inf")).amax(dim=(-2, -1), keepdim=True)
                top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            phi = (torch.exp(logits - top.detach()) + FEATURE_EPS) / math.sqrt(m)
        if not is_query:
            phi = phi * key_valid[:, None, :, None]  # padded keys contribute nothing
        return phi

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        check_inputs(q, k, v, key_padding_mask)
        o = self.options
        if self.training and o.redraw_interval > 0:
            calls = int(self.calls)
            if calls > 0 and calls % o.redraw_interval == 0:
                self.redraw(calls // o.redraw_interval)
            self.calls += 1
        batch, _, n, _ = k.shape
        key_valid = (torch.ones(batch, n, dtype=torch.bool, device=k.device) if key_padding_mask is None
                     else ~key_padding_mask)
        phi_q = self.feature_map(q, True, None)  # (batch, heads, seq_q, m)
        phi_k = self.feature_map(k, False, key_valid)  # (batch, heads, seq_k, m)
        denom = phi_q @ phi_k.sum(dim=2).unsqueeze(-1)  # (batch, heads, seq_q, 1)
        if self.training and self.dropout > 0.0:
            # Dropping key j for every query is dropout on a column of the attention matrix,
            # applied to the numerator only, as dropout on probabilities would be.
            keep = torch.rand(batch, k.shape[1], n, 1, device=k.device) >= self.dropout
            phi_k = phi_k * keep / (1.0 - self.dropout)
        context = phi_k.transpose(-2, -1) @ v.float()  # (batch, heads, m, head_dim)
        out = (phi_q @ context) / denom  # (batch, heads, seq_q, head_dim)
        return out.to(q.dtype)

    def extra_repr(self) -> str:
        o = self.options
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, num_features={o.num_features}, "
                f"kernel={o.kernel}, redraw_interval={o.redraw_interval}, dropout={self.dropout}")
