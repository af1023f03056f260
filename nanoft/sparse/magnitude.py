"""Magnitude pruning: zero the smallest weights, once before training or gradually during it.

One-shot (`magnitude`): before the first step, the `sparsity` fraction of smallest |w| is masked
(per matrix, or under one global threshold), then the survivors are fine-tuned.

Gradual (`gradual`, Zhu & Gupta 2017, "To prune, or not to prune"): from step t0 to t_end, every Δt
steps, the sparsity is raised along a cubic that prunes fast early and slowly near the end:

    s(t) = s_f + (s_i − s_f) · (1 − (t − t0) / (t_end − t0))³      t = t0, t0 + Δt, …;  s = s_f from t_end

Each pruning event masks the smallest weights among those still kept, so masks only shrink.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from nanoft.sparse.base import Pruner, magnitude_masks, score_masks, window


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int, every: int) -> float:
    """The gradual schedule's sparsity in force after `step`: 0 before `start`, the cubic at the latest
    pruning event ≤ step, `final` from `end` on."""
    if step < start:
        return 0.0
    if step >= end:
        return final
    event = start + every * ((step - start) // every)
    return final + (initial - final) * (1.0 - (event - start) / (end - start)) ** 3


class OneShotMagnitude(Pruner):
    """Prune the smallest weights once, before training."""

    name = "magnitude"

    def setup(self) -> None:
        self.set_masks(magnitude_masks(self.weights, self.target, self.options.sparsity_distribution))


class GradualMagnitude(Pruner):
    """Raise sparsity along Zhu & Gupta's cubic schedule between --prune-start and --prune-end."""

    name = "gradual"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.applied = 0.0  # the sparsity the masks hold now

    def schedule(self, step: int, total_steps: int) -> float:
        o = self.options
        start, end = window(o, total_steps)
        return cubic_sparsity(step, o.sparsity_initial, self.target, start, end, o.prune_every)

    def update_masks(self, step: int, total_steps: int, grads: bool) -> Optional[Dict[str, torch.Tensor]]:
        if grads:
            return None
        wanted = self.schedule(step, total_steps)
        if wanted <= self.applied:
            return None
        self.applied = wanted
        return score_masks(self.ranking(), wanted, self.options.sparsity_distribution, self.masks)

    def ranking(self) -> Dict[str, torch.Tensor]:
        """What each weight is kept by, highest first: its magnitude (movement pruning: its movement score)."""
        return {n: w.detach().abs().float() for n, w in self.weights.items()}

    def state_dict(self):
        return {**super().state_dict(), "applied": self.applied}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.applied = float(state.get("applied", 0.0))
