"""R-Drop (Liang et al. 2021): regularise dropout by making two dropout passes agree.

Each training batch goes through the model twice; dropout masks differ, so the two predictive
distributions p1, p2 differ, and the loss pulls them together:

    loss = ½ (CE(z1, y) + CE(z2, y)) + α · ½ (KL(p1 ‖ p2) + KL(p2 ‖ p1))

with KL summed over classes and averaged over the batch (the paper's symmetric KL; its official
code likewise averages the two cross-entropies). For regression the consistency term is the mean
squared difference of the two predictions. α = 0 is plain training: the technique is not built
and no second pass runs.

The second pass reuses `trainer.forward`; under torchrun it goes through the unwrapped model so
DDP sees one forward per backward (both passes' gradients reach the same parameters and are
reduced once).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from nanoft.train.objective import task_loss
from nanoft.train.techniques.base import Technique, TrainerView


def symmetric_kl(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """½ (KL(p1 ‖ p2) + KL(p2 ‖ p1)) per example, averaged over the batch; logits (batch, classes)."""
    logp1 = F.log_softmax(logits1.float(), dim=-1)
    logp2 = F.log_softmax(logits2.float(), dim=-1)
    kl12 = (logp1.exp() * (logp1 - logp2)).sum(-1)  # (batch,)
    kl21 = (logp2.exp() * (logp2 - logp1)).sum(-1)
    return 0.5 * (kl12 + kl21).mean()


def consistency(logits1: torch.Tensor, logits2: torch.Tensor, is_regression: bool = False) -> torch.Tensor:
    """How much two passes disagree: symmetric KL (classification) or mean squared difference (regression)."""
    if is_regression:
        return (logits1.float() - logits2.float()).pow(2).mean()
    return symmetric_kl(logits1, logits2)


def rdrop_loss(logits1: torch.Tensor, logits2: torch.Tensor, labels: torch.Tensor, alpha: float,
               is_regression: bool = False) -> torch.Tensor:
    """The full R-Drop loss of two passes over one batch (formula in the module docstring)."""
    task = 0.5 * (task_loss(logits1, labels, is_regression) + task_loss(logits2, labels, is_regression))
    return task + alpha * consistency(logits1, logits2, is_regression)


class RDrop(Technique):
    name = "rdrop"

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def loss(self, trainer: TrainerView, batch: Dict[str, torch.Tensor], logits: torch.Tensor,
             loss: torch.Tensor) -> torch.Tensor:
        model = trainer.model if trainer.dist.enabled else None
        logits2 = trainer.forward(batch, model=model)  # same batch, fresh dropout masks
        regression = trainer.task.is_regression
        second = task_loss(logits2, batch["labels"], regression)
        # `loss` is the first pass's task loss, as the objective computed it (= task_loss(logits, …))
        return 0.5 * (loss + second) + self.alpha * consistency(logits, logits2, regression)
