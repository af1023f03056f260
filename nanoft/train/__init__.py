"""Training: the Trainer (loop), its Objective, RunDir and Checkpointer, optimizers, schedules, techniques, DDP."""
from nanoft.train.config import TrainConfig
from nanoft.train.objective import Objective, SequenceClassification
from nanoft.train.rundir import RunDir
from nanoft.train.techniques.base import Technique
from nanoft.train.trainer import NonFiniteLoss, Trainer, TrainingInterrupted

__all__ = ["Trainer", "TrainConfig", "Technique", "Objective", "SequenceClassification", "RunDir",
           "TrainingInterrupted", "NonFiniteLoss"]
