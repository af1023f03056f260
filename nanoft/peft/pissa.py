"""PiSSA (Meng et al., 2024): LoRA whose factors start at the weight's principal singular directions.

With W = U S Vh (out, in) and s = alpha / r the LoRA scale, the top r singular triplets initialise

    A = sqrt(S_r / s) · Vh_r   (r, in)        B = U_r · sqrt(S_r / s)   (out, r)

so s·B·A is the rank-r principal part of W, and training moves the principal part while the
residual W_res = W − s·B0·A0 (B0, A0: the initial factors) stays frozen:

    y = W_res x + b + s · B A drop(x)

Here the pretrained weight is not overwritten by W_res: the layer computes W x − s·B0·A0·x + s·B·A·drop(x),
which is the same function with the same gradients for A and B, with B0 and A0 kept as frozen buffers.
Why: a PEFT layer's `base` stays the pretrained layer (PeftLayer's contract), so PiSSA can share a
model with other adapters (switching, mixed-adapter batches), `unload` gives back the exact base, and
the adapter file — A, B, A0, B0 — loads onto the original base model with identical outputs and no
SVD to reproduce (a full SVD's last bits depend on the LAPACK build and thread count; the randomized
`niter` one on the random stream). The cost is one more rank-r product per layer.
Merging folds s·(B·A − B0·A0) into W, i.e. the merged weight is W_res + s·B·A; at step 0 it adds zero.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.peft.layers import WeightDelta
from nanoft.peft.lora import LoraOptions
from nanoft.peft.registry import check, register


def _lora(name: str) -> Any:
    """A field whose default and help are LoraOptions' (written once; the flags are shared too)."""
    f = next(f for f in dataclasses.fields(LoraOptions) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=f.metadata)
    return field(default=f.default, metadata=f.metadata)


@dataclass
class PissaOptions:
    """Options of pissa: the LoRA flags (`--lora-r`, `--lora-alpha`, ...) plus `--pissa-niter`."""

    cli_prefix: ClassVar[str] = "lora"

    r: int = _lora("r")
    alpha: float = _lora("alpha")
    dropout: float = _lora("dropout")
    targets: Sequence[str] = _lora("targets")
    niter: int = field(default=0, metadata={
        "flag": "--pissa-niter",
        "help": "PiSSA: 0 initialises from the exact SVD; N > 0 from a randomized SVD (torch.svd_lowrank) with N "
                "subspace iterations, faster on large matrices."})

    def __post_init__(self) -> None:
        check(isinstance(self.r, int) and self.r > 0, f"pissa r must be a positive int, got {self.r!r}")
        check(self.alpha > 0, f"pissa alpha must be > 0, got {self.alpha!r}")
        check(0 <= self.dropout < 1, f"pissa dropout must be in [0, 1), got {self.dropout!r}")
        check(isinstance(self.niter, int) and self.niter >= 0, f"pissa niter must be an int ≥ 0, got {self.niter!r}")


def principal_factors(weight: torch.Tensor, r: int, scale: float, niter: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with scale·B·A = the rank-r principal part of `weight` (out, in), from the exact SVD (niter 0) or
    a randomized one; computed in fp32."""
    w = weight.detach().float()
    if niter == 0:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        u, s, v = torch.svd_lowrank(w, q=r, niter=niter)
        vh = v.T
    root = (s / scale).sqrt()
    # contiguous: LAPACK's factors are column-major, and a parameter in that layout gets optimizer state in
    # another one once a checkpoint is loaded, which the fused AdamW kernel (flat over memory) mixes up
    return (root[:, None] * vh).contiguous(), (u * root[None, :]).contiguous()


class PissaAdapter(WeightDelta):
    """Trainable A, B started at the principal part of `base.weight`; A0, B0 frozen copies of that start."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 niter: int = 0) -> None:
        super().__init__()
        w = base.weight
        check(r <= min(w.shape), f"pissa r={r} exceeds the rank of a {tuple(w.shape)} weight")
        self.r = r
        self.scale = alpha / r
        a, b = principal_factors(w, r, self.scale, niter)
        self.lora_A = nn.Parameter(a.to(w.dtype))
        self.lora_B = nn.Parameter(b.to(w.dtype))
        self.register_buffer("pissa_A0", self.lora_A.detach().clone())
        self.register_buffer("pissa_B0", self.lora_B.detach().clone())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def principal(self) -> torch.Tensor:
        """s·B0·A0: the frozen start of the principal part, which W_res = W − s·B0·A0 leaves out."""
        return self.scale * (self.pissa_B0 @ self.pissa_A0)

    def residual(self, base: nn.Linear) -> torch.Tensor:
        """W_res, the frozen part of the weight under PiSSA."""
        return base.weight - self.principal().to(base.weight.dtype)

    def delta_weight(self) -> torch.Tensor:
        """s·(B·A − B0·A0): what the adapter adds to W (zero at step 0)."""
        return self.scale * (self.lora_B @ self.lora_A - self.pissa_B0 @ self.pissa_A0)

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        out = base(x)
        new = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        old = F.linear(F.linear(x, self.pissa_A0), self.pissa_B0)  # W_res x = W x − s·B0·A0·x: no dropout here
        return out + ((new - old) * self.scale).to(out.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scale={self.scale:.4g}"


def pissa_adapter(base: nn.Linear, o: PissaOptions, layer_name: str) -> PissaAdapter:
    return PissaAdapter(base, o.r, o.alpha, o.dropout, o.niter)


# alpha = r by default (scale 1), as in the paper's experiments: A and B then carry sqrt(S_r) each. The rate is
# the best of a sweep on SST-2 (2.5e-4 .. 2e-3); PiSSA's factors start large, so it wants half LoRA's rate.
register("pissa", PissaOptions, pissa_adapter, mergeable=True, defaults={"alpha": 8.0}, lr=5e-4,
         lr_source="swept on SST-2, bench/results/pissa_vera_sweep.md")

__all__ = ["PissaOptions", "PissaAdapter", "principal_factors"]
