"""Predictions and metrics over a whole encoded split: every example exactly once, in order."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from nanoft import metrics as metrics_lib
from nanoft.data import EvalBatchSampler, collate
from nanoft.train import distributed
from nanoft.train.objective import task_loss
from nanoft.train.precision import autocast


@torch.no_grad()
def predict_logits(model: nn.Module, data: Any, pad_token_id: int, batch_size: int = 128,
                   device: Optional[torch.device] = None, precision: str = "fp32",
                   dist: Optional[distributed.DistInfo] = None) -> torch.Tensor:
    """Logits `(n, num_labels)` (or `(n,)` for regression) in dataset order, gathered across ranks."""
    dist = dist or distributed.DistInfo()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sampler = EvalBatchSampler(data.lengths, batch_size, rank=dist.rank, world_size=dist.world_size)
    indices, outputs = [], []
    for ix in sampler:
        batch = collate(data, ix, pad_token_id)
        with autocast(precision, device):
            logits = model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           token_type_ids=batch["token_type_ids"].to(device))
        indices.append(batch["index"])
        outputs.append(logits.float().cpu())
    model.train(was_training)
    local = (torch.cat(indices) if indices else torch.empty(0, dtype=torch.long),
             torch.cat(outputs) if outputs else None)
    gathered = distributed.all_gather_objects(local, dist)
    index = torch.cat([g[0] for g in gathered])
    logits = torch.cat([g[1] for g in gathered if g[1] is not None])
    order = torch.argsort(index)
    if index.numel() != len(data) or not torch.equal(index[order], torch.arange(len(data))):
        raise RuntimeError("evaluation did not cover every example exactly once")
    return logits[order]


def score(task: Any, logits: torch.Tensor, labels: np.ndarray) -> Dict[str, float]:
    """The task's metrics (and the eval loss for classification)."""
    predictions = logits.numpy() if task.is_regression else logits.argmax(-1).numpy()
    result = metrics_lib.compute(task.metrics, predictions, labels)
    targets = torch.as_tensor(labels, dtype=torch.float32 if task.is_regression else torch.long)
    result["loss"] = float(task_loss(logits, targets, task.is_regression))
    return result
