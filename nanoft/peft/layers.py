"""The wrapper every PEFT method puts around a pretrained layer, and the per-adapter head switch.

A `PeftLayer` keeps the pretrained module untouched as `base` and holds any number of named
adapters (`adapters["default"]`, `adapters["sst2"]`, ...); only the `active` one is applied. An
adapter is a small module with `forward(x, base)`: it decides how it combines with the base
layer (LoRA adds a low-rank path, IA³ rescales, a bottleneck adapter transforms the output).
Mergeable adapters also implement `merge(base)` / `unmerge(base)`, which fold their update into
`base.weight` in place, so a merged model runs at the plain model's speed and, once unwrapped,
is a plain checkpoint again.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from nanoft.errors import ConfigError


class WeightDelta(nn.Module):
    """An adapter whose whole update is an additive weight `delta_weight()` (PiSSA, VeRA): merging adds it to
    the base weight, unmerging subtracts it."""

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def merge(self, base: nn.Linear) -> None:
        base.weight.add_(self.delta_weight().to(base.weight.dtype))

    def unmerge(self, base: nn.Linear) -> None:
        base.weight.sub_(self.delta_weight().to(base.weight.dtype))


class PeftLayer(nn.Module):
    """`base` (nn.Linear or nn.Embedding) plus named adapters; the active one is applied."""

    is_peft_layer = True
    route = None  # set by nanoft.peft.multi for one mixed-adapter forward: routes each row to its adapter

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: Optional[str] = None
        self.merged: Optional[str] = None  # name of the adapter folded into base.weight, if any

    # Code that reads `layer.weight` (e.g. a tied MLM decoder) keeps working on a wrapped layer.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return getattr(self.base, "bias", None)

    def add(self, name: str, adapter: nn.Module) -> None:
        if name in self.adapters:
            raise ConfigError(f"adapter {name!r} already exists on this layer", fix="pick another name")
        self.adapters[name] = adapter

    def set_active(self, name: Optional[str]) -> None:
        """Switch adapters; a merged adapter is unmerged first so the base weight is pristine."""
        self.unmerge()
        self.active = name if name in self.adapters else None

    def merge(self) -> None:
        """Fold the active adapter into `base.weight` (no-op when already merged or none active)."""
        if self.merged is not None or self.active is None:
            return
        adapter = self.adapters[self.active]
        if not callable(getattr(adapter, "merge", None)):
            raise ConfigError(f"{type(adapter).__name__} has no merge(): it is not linear in the input",
                              fix="keep it unmerged, or use a mergeable method (lora, rslora, dora, ia3)")
        with torch.no_grad():
            adapter.merge(self.base)
        self.merged = self.active

    def unmerge(self) -> None:
        """Undo `merge` (no-op when nothing is merged)."""
        if self.merged is None:
            return
        with torch.no_grad():
            self.adapters[self.merged].unmerge(self.base)
        self.merged = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route is not None:
            return self.route(self, x)
        if self.active is None or self.merged is not None:
            return self.base(x)
        return self.adapters[self.active](x, self.base)

    def extra_repr(self) -> str:
        return f"active={self.active!r}, merged={self.merged!r}"


class HeadSwitch(nn.Module):
    """One task head per adapter, so switching adapters also switches the classifier they trained."""

    def __init__(self, heads: Dict[str, nn.Module], active: str) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)
        self.active = active

    @property
    def current(self) -> nn.Module:
        return self.heads[self.active]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.current(hidden)
