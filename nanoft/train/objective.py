"""What the loop optimises: an Objective turns a batch into a loss and an evaluation into metrics.

The Trainer knows nothing of tasks or labels. It asks its objective which head the model needs,
how to collate a batch, what the loss of a forward pass is, and what an evaluation of a split
reports and which of its metrics picks the best checkpoint. Sequence classification / regression
is the fine-tuning objective; masked-LM pretraining (`nanoft.train.mlm.MaskedLM`) is another implementation.

Optional hooks the Trainer calls when an objective has them:
    load_data(config, tokenizer) -> (train_data, {split: eval_data})  its own data instead of the config's task
    set_epoch(epoch)                                                   at the start of every epoch (new MLM masks)
    model_kwargs(batch) -> dict                                        extra model arguments (masked positions)
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.data import collate


def task_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Mean squared error (regression, logits `(batch,)`) or cross-entropy (logits `(batch, classes)`)."""
    if is_regression:
        return F.mse_loss(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


@runtime_checkable
class Objective(Protocol):
    head: str                 # model head to load: "classification", "regression", "masked-lm", …
    num_labels: int
    main_metric: str          # the evaluation metric that picks the best checkpoint
    greater_is_better: bool
    label_names: Optional[List[str]]

    def collate(self, data: Any, indices: List[int], pad_token_id: int,
                pad_to_multiple_of: Optional[int]) -> Dict[str, torch.Tensor]:
        """A padded batch (CPU tensors) of the examples `indices` of `data`."""

    def loss(self, outputs: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss of one batch, given the model's outputs for it."""

    def evaluate(self, model: nn.Module, data: Any, pad_token_id: int, batch_size: int, device: torch.device,
                 precision: str, dist: Any) -> Dict[str, float]:
        """Metrics of `model` on an encoded split; every example counted exactly once (also under DDP)."""


class SequenceClassification:
    """Fine-tuning on a task: one label (or a float) per text or text pair, scored by the task's metrics."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.head = "regression" if task.is_regression else "classification"
        self.num_labels = task.num_labels
        self.main_metric = task.main_metric
        self.greater_is_better = True
        self.label_names = task.label_names

    def collate(self, data: Any, indices: List[int], pad_token_id: int,
                pad_to_multiple_of: Optional[int]) -> Dict[str, torch.Tensor]:
        return collate(data, indices, pad_token_id, pad_to_multiple_of)

    def loss(self, outputs: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return task_loss(outputs, batch["labels"], self.task.is_regression)

    def evaluate(self, model: nn.Module, data: Any, pad_token_id: int, batch_size: int, device: torch.device,
                 precision: str, dist: Any) -> Dict[str, float]:
        from nanoft.train.evaluate import predict_logits, score

        logits = predict_logits(model, data, pad_token_id, batch_size, device, precision, dist)
        return score(self.task, logits, data.labels)


__all__ = ["Objective", "SequenceClassification", "task_loss"]
