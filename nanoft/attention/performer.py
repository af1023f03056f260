"""Performer / FAVOR+ (Choromanski et al., 2021): softmax attention through random features.

exp(q . k) = E_w[phi(q) . phi(k)] with positive features phi(x) = exp(w . x - |x|^2 / 2) / sqrt(m),
w ~ N(0, I). Replacing the softmax kernel by phi(Q) phi(K)^T lets the products be reassociated,
out = phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1), which is linear in n. The m directions w are drawn
in orthogonal blocks (lower variance than iid), and are a persistent buffer, so a checkpoint
reproduces its outputs; they are redrawn every `redraw_interval` training calls (0: never).

The softmax temperature is folded in by scaling q and k by sqrt(scale) each. Features are
computed in fp32 with the paper's stabiliser: the max log-feature is subtracted, per query for
queries and over all non-padded keys of a (batch, head) for keys; both factors cancel in the ratio.
Padded keys are weighted 0 in both sums, so they contribute nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from nanoft.attention.base import AttentionCore, key_is_valid, make_generator, require, upcast

FEATURE_EPS = 1e-6  # keeps every feature positive, as in the paper's reference code


def orthogonal_gaussian(num_features: int, dim: int, generator: Optional[torch.Generator]) -> Tensor:
    """(num_features, dim) rows with Gaussian norms, orthogonal within each block of `dim` rows."""
    blocks = -(-num_features // dim)
    q, r = torch.linalg.qr(torch.randn(blocks, dim, dim, generator=generator))  # (blocks, dim, dim)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # sign fix: only then is q uniform (Haar)
    directions = q.transpose(-2, -1).reshape(blocks * dim, dim)[:num_features]  # orthonormal rows per block
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return directions * norms  # each row marginally ~ N(0, I)


@dataclass
class PerformerOptions:
    """Performer's options."""

    num_features: int = field(default=256, metadata={"help": "m random features; the error falls like 1/sqrt(m)"})
    kernel: str = field(default="softmax", metadata={"help": "softmax (FAVOR+) or relu"})
    redraw_interval: int = field(default=0, metadata={"help": "training calls between feature redraws (0: never)"})
    seed: Optional[int] = field(default=None, metadata={"help": "seed of the features (None: torch's global RNG)"})

    def __post_init__(self) -> None:
        require(isinstance(self.num_features, int) and self.num_features > 0, "performer",
                f"num_features must be a positive int, got {self.num_features!r}", "pass e.g. num_features=256")
        require(self.kernel in ("softmax", "relu"), "performer", f"unknown kernel {self.kernel!r}",
                'use kernel="softmax" or kernel="relu"')
        require(isinstance(self.redraw_interval, int) and self.redraw_interval >= 0, "performer",
                f"redraw_interval must be an int >= 0, got {self.redraw_interval!r}", "use 0 to never redraw")


class PerformerAttention(AttentionCore):
    """Linear-time attention with positive orthogonal random features (FAVOR+)."""

    Options = PerformerOptions

    def __init__(self, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
                 scale: Optional[float] = None, options: Optional[PerformerOptions] = None, **overrides: Any) -> None:
        super().__init__(num_heads, head_dim, max_length, dropout, scale, options, **overrides)
        self.register_buffer("features", torch.empty(self.options.num_features, head_dim))  # (m, head_dim)
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

    def feature_map(self, x: Tensor, is_query: bool, key_valid: Optional[Tensor] = None) -> Tensor:
        """phi(x), fp32 for half inputs: (batch, heads, seq, head_dim) -> (batch, heads, seq, m).

        The paper's 1/sqrt(m) factor is left out: it cancels between numerator and denominator.
        """
        x = upcast(x) * math.sqrt(self.scale)
        proj = x @ self.features.to(x.dtype).T  # (batch, heads, seq, m), fresh: updated in place below
        if self.options.kernel == "relu":
            return torch.relu_(proj) + FEATURE_EPS
        logits = proj.sub_(0.5 * (x * x).sum(dim=-1, keepdim=True))  # log phi
        top = logits.detach().amax(dim=-1, keepdim=True)  # (batch, heads, seq, 1)
        if not is_query:  # one stabiliser for all keys of a (batch, head), padding excluded
            top = top.masked_fill(~key_valid[:, None, :, None], float("-inf")).amax(dim=-2, keepdim=True)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return logits.sub_(top).exp_() + FEATURE_EPS

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_inputs(q, k, v, key_padding_mask)
        o = self.options
        if self.training and o.redraw_interval > 0:
            calls = int(self.calls)
            if calls > 0 and calls % o.redraw_interval == 0:
                self.redraw(calls // o.redraw_interval)
            self.calls += 1
        batch, heads, n, _ = k.shape
        key_valid = key_is_valid(key_padding_mask, batch, n, k.device)  # (batch, seq_k)
        phi_q = self.feature_map(q, True)  # (batch, heads, seq_q, m)
        phi_k = self.feature_map(k, False, key_valid)  # (batch, heads, seq_k, m)
        # Padded keys get weight 0 in both sums (same as zeroing their features, without an n x m copy).
        weight = key_valid[:, None, None, :].to(phi_k.dtype)  # (batch, 1, 1, seq_k)
        denom = phi_q @ (weight @ phi_k).transpose(-2, -1)  # (batch, heads, seq_q, 1)
        if self.training and self.dropout > 0.0:
            # Dropping key j for every query is dropout on a column of the attention matrix,
            # applied to the numerator only, as dropout on probabilities would be.
            keep = torch.rand(batch, heads, 1, n, device=k.device) >= self.dropout
            weight = weight * keep / (1.0 - self.dropout)  # (batch, heads, 1, seq_k)
        context = phi_k.transpose(-2, -1) @ (v.to(phi_k.dtype) * weight.transpose(-2, -1))  # (batch, heads, m, dim)
        out = (phi_q @ context) / denom  # (batch, heads, seq_q, head_dim)
        return out.to(q.dtype)
