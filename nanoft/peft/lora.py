"""LoRA (Hu et al., 2021), rsLoRA (Kalajdzievski, 2023) and DoRA (Liu et al., 2024).

LoRA learns a low-rank update of a frozen weight, W' = W + s·B·A with A (r, in), B (out, r):

    y = W x + b + s · B A drop(x)        s = alpha / r   (rsLoRA: alpha / sqrt(r))

A starts Kaiming-uniform and B at zero, so the wrapped layer is exactly the pretrained one at
step 0. Merging adds s·B·A into W; unmerging subtracts it.

DoRA splits the updated weight into a magnitude per output unit and a direction:

    W' = m · V / ||V||      V = W + s·B·A,   ||V|| the L2 norm of each output row of V

m starts at ||W|| (so W' = W at step 0). Following the paper (Sec. 4.3) ||V|| is treated as a
constant in the backward pass, which saves the memory of differentiating through the norm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.peft.layers import PeftLayer
from nanoft.peft.registry import check, register
from nanoft.peft.targets import ALL_LINEAR

INITS = ("kaiming", "gaussian")


@dataclass
class LoraOptions:
    """Options of lora, rslora and dora (`--lora-r`, `--lora-alpha`, ... on the command line)."""

    cli_prefix: ClassVar[str] = "lora"

    r: int = field(default=8, metadata={"help": "Rank of the update B·A."})
    alpha: float = field(default=16.0, metadata={
        "help": "Scale numerator: the update is scaled by alpha/r (alpha/sqrt(r) under rsLoRA)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the low-rank path."})
    targets: Sequence[str] = field(default=ALL_LINEAR, metadata={
        "patterns": True, "help": "Layers to adapt, comma-separated: name suffixes, globs or re:<regex>."})
    rslora: bool = field(default=False, metadata={
        "flag": "--rslora", "help": "rsLoRA: scale by alpha/sqrt(r) instead of alpha/r."})
    dora: bool = field(default=False, metadata={
        "flag": "--dora", "help": "DoRA: learn a magnitude per output unit, LoRA on the direction."})
    init: str = field(default="kaiming", metadata={
        "choices": INITS, "help": "Initialisation of A: kaiming (uniform, as nn.Linear) or gaussian (std 1/r)."})

    def __post_init__(self) -> None:
        check(isinstance(self.r, int) and self.r > 0, f"lora r must be a positive int, got {self.r!r}")
        check(self.alpha > 0, f"lora alpha must be > 0, got {self.alpha!r}")
        check(0 <= self.dropout < 1, f"lora dropout must be in [0, 1), got {self.dropout!r}")
        check(self.init in INITS, f"lora init must be kaiming or gaussian, got {self.init!r}")


class LoraAdapter(nn.Module):
    """The trainable part of one LoRA/rsLoRA/DoRA adapter on one nn.Linear or nn.Embedding."""

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 rslora: bool = False, dora: bool = False, init: str = "kaiming") -> None:
        super().__init__()
        self.embedding = isinstance(base, nn.Embedding)
        if self.embedding:
            n_in, n_out = base.num_embeddings, base.embedding_dim
        else:
            n_in, n_out = base.in_features, base.out_features
        w = base.weight
        self.r = r
        self.scale = alpha / math.sqrt(r) if rslora else alpha / r
        self.dora = dora
        self.lora_A = nn.Parameter(torch.empty(r, n_in, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r, device=w.device, dtype=w.dtype))
        if self.embedding:
            # For a lookup table the input is one-hot, so the roles flip (as in the paper's code):
            # A is zero and B random, which again makes the update start at exactly zero.
            nn.init.zeros_(self.lora_A)
            nn.init.normal_(self.lora_B)
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / r)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if dora:
            self.lora_magnitude = nn.Parameter(self.weight_norm(base.weight).detach().clone())
        self._merged_norm: Optional[torch.Tensor] = None  # ||V|| at merge time, to undo DoRA exactly

    def delta_weight(self) -> torch.Tensor:
        """s·B·A in the layout of `base.weight`: (out, in) for Linear, (num_embeddings, dim) for Embedding."""
        delta = self.scale * (self.lora_B @ self.lora_A)  # (out, in)
        return delta.T if self.embedding else delta

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """||W + s·B·A|| per output unit: rows of a Linear weight, columns of an embedding table."""
        v = weight + self.delta_weight().to(weight.dtype)
        return v.norm(p=2, dim=0 if self.embedding else 1)  # (out,)

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        # Results keep the dtype the plain layer would give (bf16 under autocast), so a wrapped
        # projection never hands the attention kernel a query in another dtype than the key.
        if self.embedding:
            lora = F.embedding(x, self.lora_A.T) @ self.lora_B.T * self.scale  # (..., dim)
            out = base(x)
            return out + lora.to(out.dtype) if not self.dora else self._dora(out + lora.to(out.dtype), base, None)
        a_x = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        if not self.dora:
            out = base(x)  # (..., out)
            # W x + b + s·B (A x) with the sum done inside one GEMM (addmm) and s riding on the small B: the
            # low-rank path then costs no extra pass over the (tokens, out) activations, forward or backward
            rows = out.reshape(-1, out.shape[-1])  # (tokens, out)
            scaled_b = (self.lora_B * self.scale).T.to(out.dtype)  # (r, out)
            return torch.addmm(rows, a_x.reshape(-1, self.r).to(out.dtype), scaled_b).view(out.shape)
        lora = F.linear(a_x, self.lora_B) * self.scale  # (..., out)
        w_x = F.linear(x, base.weight)
        return self._dora(w_x + lora.to(w_x.dtype), base, base.bias)

    def _dora(self, v_x: torch.Tensor, base: nn.Module, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """m/||V|| · (V x) + b, given V x = W x + s·B·A x (the norm is detached, as in the paper)."""
        norm = self.weight_norm(base.weight).detach()
        y = v_x * (self.lora_magnitude / norm).to(v_x.dtype)
        return y if bias is None else y + bias.to(y.dtype)

    def merge(self, base: nn.Module) -> None:
        delta = self.delta_weight().to(base.weight.dtype)
        if not self.dora:
            base.weight.add_(delta)
            return
        norm = self.weight_norm(base.weight)
        factor = self.lora_magnitude / norm
        self._merged_norm = norm
        base.weight.add_(delta)
        base.weight.mul_(factor[None, :] if self.embedding else factor[:, None])

    def unmerge(self, base: nn.Module) -> None:
        delta = self.delta_weight().to(base.weight.dtype)
        if self.dora:
            factor = self.lora_magnitude / self._merged_norm
            base.weight.div_(factor[None, :] if self.embedding else factor[:, None])
            self._merged_norm = None
        base.weight.sub_(delta)

    def extra_repr(self) -> str:
        return f"r={self.r}, scale={self.scale:.4g}, dora={self.dora}"


class LoraLinear(PeftLayer):
    """`base` nn.Linear with a LoRA adapter named `name` (more can be added with `add`)."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 rslora: bool = False, dora: bool = False, name: str = "default", init: str = "kaiming") -> None:
        super().__init__(base)
        self.add(name, LoraAdapter(base, r, alpha, dropout, rslora, dora, init))
        self.active = name


def lora_adapter(base: nn.Module, o: LoraOptions, layer_name: str) -> LoraAdapter:
    return LoraAdapter(base, o.r, o.alpha, o.dropout, o.rslora, o.dora, o.init)


# rsLoRA and DoRA are LoRA with one option switched on by default. Recipe rates (`--peft NAME` without --lr):
# LoRA's from the sweep on SST-2 and CoLA, bench/results/lora_sweep.md; rsLoRA scales by alpha/sqrt(r), 2.83x
# LoRA's alpha/r at r = 8, so its rate is LoRA's / 2.83 (the same step); DoRA keeps LoRA's (its paper does too).
_SWEEP = "bench/results/lora_sweep.md"
for _method, _defaults, _lr, _source in (
        ("lora", {}, 1e-3, f"swept on SST-2 and CoLA, {_SWEEP}"),
        ("rslora", {"rslora": True}, 3.5e-4, f"LoRA's swept rate / 2.83: the same step at r = 8, {_SWEEP}"),
        ("dora", {"dora": True}, 1e-3, f"LoRA's swept rate, {_SWEEP}")):
    register(_method, LoraOptions, lora_adapter, mergeable=True, defaults=_defaults, layers=(nn.Linear, nn.Embedding),
             lr=_lr, lr_source=_source)
