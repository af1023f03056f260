"""The points where a fine-tuning technique plugs into the training loop, and what it may see there.

A technique (re-init, R-Drop, SWA, distillation, gradual unfreezing …) is an object with any of
these methods; the Trainer calls them in order for every active technique, so techniques compose
without knowing about each other. What a technique may read or call on the trainer is the
`TrainerView` protocol below — nothing else is promised.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from nanoft.train.rundir import RunDir


class TrainerView(Protocol):
    """The part of the Trainer a technique may use."""
    config: Any                      # the run's TrainConfig
    model: nn.Module                 # the unwrapped model (not DDP / compiled)
    tokenizer: Any
    task: Any                        # the task (labels, metric), for techniques that need it
    objective: Any                   # the Objective: `objective.loss(outputs, batch)`
    device: torch.device
    dist: Any                        # DistInfo: rank, world_size, is_main, enabled
    precision: str
    step: int                        # optimizer steps taken so far
    total_steps: int
    optimizer: Any                   # the torch optimizer (sparsity zeroes the state of pruned weights)
    train_data: Any                  # the encoded training split
    eval_data: Dict[str, Any]        # encoded evaluation splits by name
    run_dir: "RunDir"                # where the run writes (`run_dir / "swa"` is a Path)

    def forward(self, batch: Dict[str, torch.Tensor], model: Optional[nn.Module] = None) -> torch.Tensor: ...

    def evaluate(self, split: str = "dev", model: Optional[nn.Module] = None, data: Any = None) -> Dict[str, float]: ...

    def export(self, directory: Path) -> None: ...


class Technique:
    name = "technique"

    def setup(self, trainer: TrainerView) -> None:
        """After the model is loaded, before PEFT is applied and before the optimizer is built."""

    def before_training(self, trainer: TrainerView) -> None:
        """Once, before the first optimizer step of a run (not when resuming one): data and optimizer exist."""

    def loss(self, trainer: TrainerView, batch: Dict[str, torch.Tensor], logits: torch.Tensor,
             loss: torch.Tensor) -> torch.Tensor:
        """Given the objective's loss of a (micro-)batch, return the loss to back-propagate."""
        return loss

    def before_optimizer_step(self, trainer: TrainerView) -> None:
        """After backward and gradient clipping, before the optimizer updates the weights."""

    def after_step(self, trainer: TrainerView) -> None:
        """After each optimizer step (trainer.step has been incremented)."""

    def finish(self, trainer: TrainerView) -> Optional[Dict[str, Any]]:
        """At the end of training; may return extra results (e.g. the SWA model's metrics)."""
        return None

    def may_be_best(self, trainer: TrainerView) -> bool:
        """Whether the model as it is now may become the run's best (sparsity: not before it is as sparse as asked,
        or `best/` would be a denser model than the run promises)."""
        return True

    def export_files(self, model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
        """{file name: tensors} to save beside `model` when it is exported (sparsity: its masks)."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed for exact resume: numbers, strings, lists, dicts and tensors (no objects)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what `state_dict` saved (for exact resume)."""
