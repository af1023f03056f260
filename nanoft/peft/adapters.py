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

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.errors import ConfigError
from nanoft.peft.layers import PeftLayer

NON_LINEARITIES = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "silu": F.silu, "tanh": torch.tanh}


class BottleneckAdapter(nn.Module):
    """down → non-linearity → up, added to the wrapped layer's output."""

    mergeable = False

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


class AdapterLinear(PeftLayer):
    """`base` nn.Linear followed by a bottleneck adapter named `name`."""

    def __init__(self, base: nn.Linear, reduction_factor: int = 16, non_linearity: str = "swish",
                 name: str = "default") -> None:
        super().__init__(base)
        self.add(name, BottleneckAdapter(base, reduction_factor, non_linearity))
        self.active = name
