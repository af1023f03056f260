"""Child-Tuning-F (Xu et al. 2021, "Raise a Child in Large Language Model"): at every optimizer
step only a random child network is updated.

Each gradient entry is kept with probability p and rescaled so its expectation is unchanged:

    g ← g ⊙ M / p,    M ~ Bernoulli(p), drawn afresh each step

The mask is applied after clipping, right before the optimizer step, to every trainable
parameter (as the paper's optimizer does). It is drawn from a generator seeded by (run seed,
step, parameter index), so a resumed run draws the very same masks without saving RNG state.
p = 1 keeps every gradient: the run equals the baseline.
"""
from __future__ import annotations

from typing import Iterable

import torch

from nanoft.errors import ConfigError
from nanoft.train.techniques.base import Technique, TrainerView


def child_mask(shape: torch.Size, p: float, seed: int, step: int, index: int,
               device: torch.device) -> torch.Tensor:
    """The Bernoulli(p) keep-mask of parameter `index` at `step`, as a bool tensor on `device`."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) * 10_007 + index)
    return torch.rand(shape, generator=generator, device=device) < p


def mask_gradients(parameters: Iterable[torch.nn.Parameter], p: float, seed: int, step: int) -> None:
    """In place: g ← g ⊙ M / p for every parameter that has a gradient."""
    for index, param in enumerate(parameters):
        if param.grad is None:
            continue
        keep = child_mask(param.grad.shape, p, seed, step, index, param.grad.device)
        param.grad.mul_(keep).div_(p)


class ChildTuning(Technique):
    """`child_tuning_p = p`: update a random p-fraction of the weights at each step (task-free variant F)."""

    name = "child_tuning"

    def __init__(self, p: float, seed: int) -> None:
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"child_tuning_p must be in (0, 1], got {p}",
                              fix="it is the fraction of gradient entries kept; the paper uses 0.2–0.4")
        self.p, self.seed = float(p), int(seed)

    def before_optimizer_step(self, trainer: TrainerView) -> None:
        if self.p < 1.0:
            params = [p for p in trainer.model.parameters() if p.requires_grad]
            mask_gradients(params, self.p, self.seed, trainer.step)
