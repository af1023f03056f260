"""Movement pruning (Sanh et al. 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning"), hard variant.

Magnitude pruning keeps the weights that are large; in fine-tuning, what matters is where a weight
is going. Movement pruning keeps the weights moving away from zero. Each weight carries a score that
accumulates, at every optimizer step t up to --prune-end (before the step, from the gradient the
optimizer will use),

    S ← S − W_t ⊙ ∂L/∂W_t          (first-order movement: > 0 when the update pushes |W| up)

and at each pruning event the weights with the lowest S are masked, the sparsity following the same
cubic schedule as gradual magnitude pruning (Zhu & Gupta 2017: --sparsity-initial → --sparsity from
--prune-start to --prune-end every --prune-every steps). The scale of S (the paper's learning-rate
factor) does not change which weights rank lowest, so none is kept.

Masks are applied like every other method's (weights and their optimizer state zeroed): a pruned
weight is then exactly zero, its score stops moving, and masks only shrink. The paper's straight-through
variant, where a pruned weight keeps its value and can come back, is not what this module does.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from nanoft.errors import CheckpointError
from nanoft.sparse.base import window
from nanoft.sparse.magnitude import GradualMagnitude


class MovementPruning(GradualMagnitude):
    """Gradual pruning (the cubic schedule) of the weights with the lowest accumulated movement score."""

    name = "movement"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scores = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in self.weights.items()}

    def update_masks(self, step: int, total_steps: int, grads: bool) -> Optional[Dict[str, torch.Tensor]]:
        if grads:
            if step > window(self.options, total_steps)[1]:  # the masks are final: scores no longer matter
                return None
            with torch.no_grad():
                for name, w in self.weights.items():
                    if w.grad is not None:  # a frozen layer (gradual unfreezing) does not move
                        self.scores[name].sub_(w.detach().float() * w.grad.float())
            return None
        return super().update_masks(step, total_steps, grads)  # the cubic schedule, ranked by `ranking`

    def ranking(self) -> Dict[str, torch.Tensor]:
        return self.scores

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "scores": {n: s.cpu().clone() for n, s in self.scores.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("scores")
        if not (isinstance(saved, dict) and set(saved) == set(self.scores) and all(
                isinstance(saved[n], torch.Tensor) and saved[n].shape == s.shape for n, s in self.scores.items())):
            raise CheckpointError("the checkpoint's movement scores do not fit this run's pruned weights",
                                  fix="resume with the same --prune and --sparsity-* options")
        self.scores = {n: saved[n].to(self.scores[n].device, torch.float32) for n in self.scores}
