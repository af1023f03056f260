"""VeRA (Kopiczko et al., 2024): one pair of frozen random matrices for all layers, trained scaling vectors.

Every adapted linear layer (in → out) uses slices of the same two frozen matrices, A (r, in_max) and
B (out_max, r), sized to the largest picked layer, and trains only two vectors:

    y = W x + b + Λ_b B_out Λ_d A_in drop(x)      Λ_d = diag(d) (r),  Λ_b = diag(b) (out)

with A_in = A[:, :in] and B_out = B[:out]. b starts at zero (the layer is unchanged at step 0), d at
`d_init`. A and B are drawn, A first, by `torch.nn.init.kaiming_uniform_(a=sqrt(5))` (nn.Linear's init)
from a `torch.Generator` seeded with `seed`, so they are reproducible from the seed alone. They are
shared tensors (one copy in memory, in the adapter file and in checkpoints) and stored in the adapter
file anyway, once: that costs 2·r·max(in, out) numbers and a file never depends on the random stream of
a torch version. Like LoRA the update is linear in W, so VeRA merges exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.peft.layers import PeftLayer, WeightDelta
from nanoft.peft.registry import check, register


@dataclass
class VeraOptions:
    """Options of vera (`--vera-r`, `--vera-targets`, `--vera-d-init`, `--vera-seed`, `--vera-dropout`)."""

    r: int = field(default=256, metadata={
        "help": "Rank of the shared random matrices (VeRA affords high ranks: they are not trained)."})
    targets: Sequence[str] = field(default=("query", "value"), metadata={
        "patterns": True, "help": "Linears to adapt, comma-separated: name suffixes, globs or re:<regex>."})
    d_init: float = field(default=0.1, metadata={"help": "Starting value of the scaling vector d (b starts at 0)."})
    seed: int = field(default=0, metadata={"help": "Seed of the shared random matrices A and B."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the VeRA path."})

    def __post_init__(self) -> None:
        check(isinstance(self.r, int) and self.r > 0, f"vera r must be a positive int, got {self.r!r}")
        check(0 <= self.dropout < 1, f"vera dropout must be in [0, 1), got {self.dropout!r}")
        check(isinstance(self.seed, int), f"vera seed must be an int, got {self.seed!r}")


def shared_matrices(seed: int, r: int, in_max: int, out_max: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(A (r, in_max), B (out_max, r)) in fp32 on the CPU, drawn from `seed` as the module docstring says."""
    g = torch.Generator().manual_seed(seed)
    a = nn.init.kaiming_uniform_(torch.empty(r, in_max), a=math.sqrt(5), generator=g)
    b = nn.init.kaiming_uniform_(torch.empty(out_max, r), a=math.sqrt(5), generator=g)
    return a, b


class VeraShared(nn.Module):
    """The frozen pair, one module object registered under every adapter of one VeRA adapter name."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("vera_A", a)
        self.register_buffer("vera_B", b)


@dataclass
class VeraLayers:
    """What `prepare` hands each factory call: the options and the shared pair."""

    options: VeraOptions
    shared: VeraShared


class VeraAdapter(WeightDelta):
    """Trainable vectors d (r) and b (out) on one nn.Linear; the random matrices come from `shared`."""

    def __init__(self, base: nn.Linear, shared: VeraShared, d_init: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        r, in_max = shared.vera_A.shape
        check(base.in_features <= in_max and base.out_features <= shared.vera_B.shape[0],
              f"vera: a {base.in_features}→{base.out_features} layer is larger than the shared matrices")
        self.n_in, self.n_out = base.in_features, base.out_features
        w = base.weight
        self.shared = shared
        self.vera_lambda_d = nn.Parameter(torch.full((r,), float(d_init), device=w.device, dtype=w.dtype))
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.n_out, device=w.device, dtype=w.dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def matrices(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices (A_in (r, in), B_out (out, r)) of the shared pair."""
        return self.shared.vera_A[:, :self.n_in], self.shared.vera_B[:self.n_out]

    def delta_weight(self) -> torch.Tensor:
        """diag(b)·B_out·diag(d)·A_in, (out, in)."""
        a, b = self.matrices()
        return (self.vera_lambda_b[:, None] * b) @ (self.vera_lambda_d[:, None] * a)

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        a, b = self.matrices()
        out = base(x)
        h = F.linear(self.dropout(x), a.to(x.dtype)) * self.vera_lambda_d.to(x.dtype)  # (..., r)
        h = F.linear(h, b.to(h.dtype)) * self.vera_lambda_b.to(h.dtype)  # (..., out)
        return out + h.to(out.dtype)

    def extra_repr(self) -> str:
        return f"r={self.vera_lambda_d.numel()}, in={self.n_in}, out={self.n_out}"


def vera_prepare(model: nn.Module, o: VeraOptions, layer_names: List[str]) -> VeraLayers:
    """Draw the shared pair once, sized to the largest picked layer, on that layer's device and dtype."""
    layers = [model.get_submodule(n) for n in layer_names]
    bases = [layer.base if isinstance(layer, PeftLayer) else layer for layer in layers]
    a, b = shared_matrices(o.seed, o.r, max(m.in_features for m in bases), max(m.out_features for m in bases))
    w = bases[0].weight
    return VeraLayers(o, VeraShared(a.to(w.device, w.dtype), b.to(w.device, w.dtype)))


def vera_adapter(base: nn.Linear, plan: VeraLayers, layer_name: str) -> VeraAdapter:
    return VeraAdapter(base, plan.shared, plan.options.d_init, plan.options.dropout)


# Only scaling vectors train, so VeRA needs a far larger rate than LoRA: the best of a sweep on SST-2
# (4e-3 .. 8e-2) is 4e-2.
register("vera", VeraOptions, vera_adapter, mergeable=True, prepare=vera_prepare, lr=4e-2,
         lr_source="swept on SST-2, bench/results/pissa_vera_sweep.md")

__all__ = ["VeraOptions", "VeraAdapter", "VeraShared", "shared_matrices"]
