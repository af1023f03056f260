"""Gradual unfreezing (Howard & Ruder 2018, ULMFiT).

Training starts with only the head trainable; every `unfreeze_every` optimizer steps one more
encoder block becomes trainable, from the top down, and the embeddings last. So after step s the
trainable depths are those ≥ head_depth − s // every (depths as in `nanoft.train.optim.layer_depth`:
0 embeddings, i+1 layer i, L+1 head).

Freezing is `requires_grad_(False)`: a frozen parameter gets no gradient, so AdamW keeps no state
for it and does not decay it; it already sits in its optimizer group (see optim.py), so unfreezing
is `requires_grad_(True)` and its Adam moments start from zero at that step. The global LR
schedule applies throughout (ULMFiT pairs unfreezing with slanted triangular rates: use
`--schedule one-cycle` or `cyclic` for that); nothing is reset when a block thaws.

The schedule is applied in a forward pre-hook on the model, so it is in force before the graph of
each training step is built, whatever the order of setup, PEFT and resume. With PEFT, only the
tensors PEFT left trainable are ever unfrozen (the adapters of a block thaw with the block).
"""
from __future__ import annotations

from typing import Any, Optional, Set

from torch import nn

from nanoft.errors import ConfigError
from nanoft.train.techniques.base import Technique, TrainerView
from nanoft.train.optim import layer_depth


def trainable_from_depth(step: int, every: int, num_layers: int) -> int:
    """The lowest trainable depth after `step` optimizer steps (head = num_layers + 1, embeddings = 0)."""
    return max(0, num_layers + 1 - step // every)


class GradualUnfreezing(Technique):
    name = "unfreeze"

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ConfigError(f"unfreeze_every must be ≥ 1, got {every}")
        self.every = every
        self.allowed: Optional[Set[str]] = None  # parameters that may train at all (PEFT decides)
        self.applied_step = -1
        self.trainer: Any = None

    def setup(self, trainer: TrainerView) -> None:
        if trainer.dist.enabled:
            raise ConfigError("gradual unfreezing is not supported under torchrun (DDP registers the "
                              "trainable parameters once)", fix="train on one process or drop --unfreeze-every")
        self.trainer = trainer
        trainer.model.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if module.training and self.trainer.step != self.applied_step:
            self.apply(module, self.trainer.step)

    def apply(self, model: nn.Module, step: int) -> None:
        """Set requires_grad for the state after `step` optimizer steps."""
        if self.allowed is None:
            self.allowed = {n for n, p in model.named_parameters() if p.requires_grad}
        num_layers = model.config.num_layers
        lowest = trainable_from_depth(step, self.every, num_layers)
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.allowed and layer_depth(name, num_layers) >= lowest)
        self.applied_step = step

    def finish(self, trainer: TrainerView):
        lowest = trainable_from_depth(trainer.step, self.every, trainer.model.config.num_layers)
        return {"unfreeze": {"every": self.every, "lowest_trainable_depth": lowest}}

    def state_dict(self):
        return {"allowed": sorted(self.allowed) if self.allowed is not None else None}

    def load_state_dict(self, state) -> None:
        if state.get("allowed") is not None:
            self.allowed = set(state["allowed"])
