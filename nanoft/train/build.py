"""Building a run's pieces from its TrainConfig: task, model, encoded splits, sampler, optimizer, schedule.

Each function takes the config and what it depends on and returns one piece; the Trainer wires them.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional, Tuple

import numpy as np
import torch

from nanoft.data import BucketBatchSampler, RandomBatchSampler, encode
from nanoft.models import EncoderModel
from nanoft.train.config import TrainConfig
from nanoft.train.optim import build_optimizer, param_groups
from nanoft.train.precision import grad_scaler
from nanoft.train.schedules import ScheduleConfig, Scheduler
from nanoft.weights.tokenizer import Truncation

log = logging.getLogger(__name__)


def load_task(config: TrainConfig) -> Any:
    """A built-in task by name, or one described by the user's files and columns."""
    from nanoft.tasks import from_files, get_task

    if config.task:
        return get_task(config.task)
    return from_files(config.train_file, config.dev_file, config.test_file,
                      text_columns=config.text_columns or ["text"], label_column=config.label_column or "label",
                      has_header=not config.no_header, split=config.split, seed=config.seed,
                      is_regression={"auto": None, "classification": False, "regression": True}[config.label_type])


def load_model_for(config: TrainConfig, head: str, num_labels: int) -> Tuple[EncoderModel, Any]:
    """The run's checkpoint with the objective's head, attention kind, dropout and length; and the load report."""
    from nanoft.weights import load_model

    model, report = load_model(config.model, head=head, num_labels=num_labels, attention=config.attention,
                               attention_options=config.attention_options or None, max_length=config.max_length,
                               hidden_dropout=config.hidden_dropout, attention_dropout=config.attention_dropout,
                               unpad=config.unpad, return_report=True)
    log.info("loaded %s: %s", report.path, report.summary())
    model.encoder.gradient_checkpointing = config.gradient_checkpointing
    return model, report


def encode_split(config: TrainConfig, task: Any, tokenizer: Any, split: str, subset: Optional[int] = None) -> Any:
    """Token ids of one split (cached on disk); `subset` takes a seeded random sample, in file order."""
    examples = task.load(config.data_dir, split)
    if subset is not None and subset < len(examples):
        order = np.random.default_rng(config.seed).permutation(len(examples))[:subset]
        examples = examples.select(np.sort(order))
    return encode(examples, tokenizer, config.max_length, truncation=Truncation.from_config(config))


def make_sampler(config: TrainConfig, lengths: Any, world_size: int) -> Any:
    """Every rank draws the same global batches (batch_size × world) and takes its slice of each."""
    cls = BucketBatchSampler if config.sampler == "bucket" else RandomBatchSampler
    return cls(lengths, config.batch_size * world_size,
               max_tokens=config.max_tokens * world_size if config.max_tokens else None, seed=config.seed)


def make_optimization(config: TrainConfig, model: torch.nn.Module, batches_per_epoch: int, precision: str,
                      device: torch.device) -> Tuple[int, int, Any, Scheduler, Any]:
    """(steps per epoch, total steps, optimizer, schedule, gradient scaler or None)."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    groups = param_groups(model, config.lr, config.weight_decay, config.layerwise_lr_decay, config.layer_lrs,
                          config.lora_plus_ratio)
    optimizer = build_optimizer(groups, config.optimizer, lr=config.lr, eps=config.adam_eps,
                                momentum=config.momentum)
    scheduler = Scheduler(optimizer, ScheduleConfig(
        name=config.schedule, total_steps=total_steps, warmup_steps=config.warmup_steps(total_steps),
        cycle_steps=config.cycle_steps))
    return steps_per_epoch, total_steps, optimizer, scheduler, grad_scaler(precision, device)
