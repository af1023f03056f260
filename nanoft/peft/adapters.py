"""Bottleneck adapters: Houlsby et al. (2019) and Pfeiffer et al. (2021).

A bottleneck adapter is a small residual MLP on a sublayer's output:

    y = W x + b                      the pretrained projection (attention output or FFN output)
    y' = y + up(act(down(y)))        down: hidden → hidden / reduction_factor, up: back to hidden

and it sits before the sublayer's residual add and LayerNorm, which is where both papers put
it. Houlsby adds one after the attention block and one after the FFN; Pfeiffer only the one
after the FFN (half the parameters, about the same accuracy). `up` starts at zero, so each
adapter is exactly the identity at step 0. Adapters are non-linear in y: they do not merge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.errors import ConfigError
from nanoft.peft.registry import check, register

NON_LINEARITIES = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "silu": F.silu, "tanh": torch.tanh}


@dataclass
class BottleneckOptions:
    """Options of houlsby and pfeiffer (`--adapter-reduction`, ... on the command line)."""

    cli_prefix: ClassVar[str] = "adapter"

    reduction_factor: int = field(default=16, metadata={
        "flag": "--adapter-reduction", "help": "Bottleneck width = hidden size / this factor."})
    non_linearity: str = field(default="swish", metadata={
        "choices": tuple(NON_LINEARITIES), "help": "Activation inside the bottleneck."})
    targets: Sequence[str] = field(default=("attention.output", "ffn.output"), metadata={
        "patterns": True, "help": "Linears whose output gets an adapter, comma-separated."})

    def __post_init__(self) -> None:
        check(isinstance(self.reduction_factor, int) and self.reduction_factor > 0,
              f"adapter reduction_factor must be a positive int, got {self.reduction_factor!r}")
        check(self.non_linearity in NON_LINEARITIES,
              f"adapter non_linearity must be one of {', '.join(NON_LINEARITIES)}, got {self.non_linearity!r}")


class BottleneckAdapter(nn.Module):
    """down → non-linearity → up, added to the wrapped layer's output."""

    def __init__(self, base: nn.Linear, reduction_factor: int = 16, non_linearity: str = "swish",
                 init_std: float = 1e-2) -> None:
        super().__init__()
        if non_linearity not in NON_LINEARITIES:
            raise ConfigError(f"unknown adapter non_linearity {non_linearity!r}",
                              fix=f"use one of {', '.join(NON_LINEARITIES)}")
        hidden = base.out_features
        bottleneck = max(1, hidden // reduction_factor)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.adapter_down = nn.Linear(hidden, bottleneck, **kw)
        self.adapter_up = nn.Linear(bottleneck, hidden, **kw)
        self.non_linearity = non_linearity
        self.act = NON_LINEARITIES[non_linearity]
        nn.init.normal_(self.adapter_down.weight, std=init_std)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)  # identity at step 0
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        y = base(x)
        return y + self.adapter_up(self.act(self.adapter_down(y)))

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity}"


def bottleneck_adapter(base: nn.Linear, o: BottleneckOptions, layer_name: str) -> BottleneckAdapter:
    return BottleneckAdapter(base, o.reduction_factor, o.non_linearity)


# Houlsby: after attention and FFN; Pfeiffer: after the FFN only, with ReLU.
# Rates not swept here: the ones bench/results/peft_sst2.md used (Houlsby et al. sweep 3e-5 to 3e-3).
_LR_SOURCE = "not swept; the rate of bench/results/peft_sst2.md (Houlsby et al. sweep 3e-5..3e-3)"
register("houlsby", BottleneckOptions, bottleneck_adapter, mergeable=False, lr=1e-3, lr_source=_LR_SOURCE)
register("pfeiffer", BottleneckOptions, bottleneck_adapter, mergeable=False,
         defaults={"non_linearity": "relu", "targets": ("ffn.output",)}, lr=1e-3, lr_source=_LR_SOURCE)
