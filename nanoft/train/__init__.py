"""Training: the loop, optimizers and parameter groups, schedules, techniques, checkpoints, DDP."""
from nanoft.train.config import TrainConfig
from nanoft.train.hooks import Technique
from nanoft.train.trainer import NonFiniteLoss, Trainer, TrainingInterrupted

__all__ = ["Trainer", "TrainConfig", "Technique", "TrainingInterrupted", "NonFiniteLoss"]
