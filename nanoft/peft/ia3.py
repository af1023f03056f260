"""IA³ (Liu et al., 2022): learned per-feature scaling vectors, nothing else.

The paper rescales keys, values and the FFN's inner activation: k' = l_k ⊙ k, v' = l_v ⊙ v,
h' = l_ff ⊙ act(W1 x). Keys and values are outputs of `attention.key` / `attention.value`, so
there IA³ scales a linear layer's output. The FFN activation sits *between* `ffn.intermediate`
and `ffn.output`, and scaling the input of `ffn.output` is the same thing: W2 (l ⊙ h) = (W2 diag l) h.
Either way the scaling folds into the weight, so IA³ merges: diag(l)·W, l ⊙ b for outputs and
W·diag(l) for inputs. The vectors start at one: the model is unchanged at step 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from nanoft.peft.registry import register
from nanoft.peft.targets import matches


@dataclass
class IA3Options:
    """Options of ia3 (`--ia3-targets`, `--ia3-feedforward` on the command line)."""

    targets: Sequence[str] = field(default=("key", "value", "ffn.output"), metadata={
        "patterns": True, "help": "Linears to rescale, comma-separated."})
    feedforward: Sequence[str] = field(default=("ffn.output",), metadata={
        "patterns": True, "help": "Those targets whose input (the FFN activation) is scaled, not their output."})


class IA3Adapter(nn.Module):
    """A scaling vector on the output (`scale_input=False`) or the input of one nn.Linear."""

    def __init__(self, base: nn.Linear, scale_input: bool = False) -> None:
        super().__init__()
        self.scale_input = scale_input
        size = base.in_features if scale_input else base.out_features
        self.ia3_scale = nn.Parameter(torch.ones(size, device=base.weight.device, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        if self.scale_input:
            return base(x * self.ia3_scale.to(x.dtype))
        out = base(x)
        return out * self.ia3_scale.to(out.dtype)  # the plain layer's dtype (bf16 under autocast)

    def merge(self, base: nn.Linear) -> None:
        self._fold(base, torch.Tensor.mul_)

    def unmerge(self, base: nn.Linear) -> None:
        self._fold(base, torch.Tensor.div_)

    def _fold(self, base: nn.Linear, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """W·diag(l) for a scaled input; diag(l)·W and l ⊙ b for a scaled output (op: mul_ folds, div_ undoes)."""
        if self.scale_input:
            op(base.weight, self.ia3_scale[None, :])
            return
        op(base.weight, self.ia3_scale[:, None])
        if base.bias is not None:
            op(base.bias, self.ia3_scale)

    def extra_repr(self) -> str:
        return f"{'input' if self.scale_input else 'output'}, size={self.ia3_scale.numel()}"


def ia3_adapter(base: nn.Linear, o: IA3Options, layer_name: str) -> IA3Adapter:
    return IA3Adapter(base, scale_input=any(matches(p, layer_name) for p in o.feedforward or ()))


register("ia3", IA3Options, ia3_adapter, mergeable=True, lr=3e-3,
         lr_source="not swept; the T-Few paper's (IA3) rate 3e-3, bench/results/peft_sst2.md's too")
