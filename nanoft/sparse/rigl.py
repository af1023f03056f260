"""RigL (Evci et al. 2020, "Rigging the Lottery"): train at a fixed sparsity while the masks move.

The masks start at the target sparsity (here by magnitude, as the model is pretrained; the paper
starts from random masks). Every ΔT steps t from --prune-start until --prune-end (T_end), before
the optimizer step, each layer with n active weights

    drops k = ⌊f(t) · n⌋ active weights of smallest |w|,    f(t) = α/2 · (1 + cos(π t / T_end))
    grows k inactive weights of largest |∂L/∂w| (the dense gradient; just-dropped ones may regrow)

so each layer keeps exactly n non-zeros. A grown weight that was inactive starts at zero with zero
optimizer state; a dropped weight is zeroed at once.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from nanoft.sparse.base import Pruner, keep_largest, magnitude_masks, window


def rigl_fraction(step: int, alpha: float, end: int) -> float:
    """The cosine-decayed update fraction f(t) = α/2 · (1 + cos(π t / T_end))."""
    return alpha / 2 * (1 + math.cos(math.pi * step / end))


def rigl_update(weight: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """The new mask: `count` smallest-|w| active entries dropped, `count` largest-|grad| others grown."""
    active = int(mask.sum())
    minus_inf = torch.tensor(float("-inf"), device=weight.device)
    kept = keep_largest(torch.where(mask, weight.detach().abs().float(), minus_inf), active - count)
    grown = keep_largest(torch.where(kept, minus_inf, grad.detach().abs().float()), count)
    return kept | grown


class RigL(Pruner):
    """Fixed sparsity; drop-by-magnitude / grow-by-gradient every --prune-every steps."""

    name = "rigl"

    def setup(self) -> None:
        self.set_masks(magnitude_masks(self.weights, self.target, self.options.sparsity_distribution))

    def update_masks(self, step: int, total_steps: int, grads: bool) -> Optional[Dict[str, torch.Tensor]]:
        o = self.options
        if not grads:
            return None
        start, end = window(o, total_steps)
        if not (start <= step < end and step % o.prune_every == 0):
            return None
        fraction = rigl_fraction(step, o.rigl_fraction, end)
        new = {}
        for name, w in self.weights.items():
            if w.grad is None:  # frozen at this step (e.g. gradual unfreezing): leave its mask
                continue
            old = self.masks[name]
            mask = rigl_update(w, w.grad, old, int(fraction * int(old.sum())))
            with torch.no_grad():
                w.mul_(mask & old)  # dropped → 0; grown (were inactive) are 0 already
            new[name] = mask
        return new
