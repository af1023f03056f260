"""Fine-tuning techniques from the literature, each switched on by TrainConfig keys.

    key                      technique (module)                                   paper
    reinit_layers = k        fresh top-k layers + pooler (reinit)                 Zhang et al. 2021
    unfreeze_every = n       gradual unfreezing, top first (unfreeze)             Howard & Ruder 2018
    rdrop_alpha = α          two dropout passes + symmetric KL (rdrop)            Liang et al. 2021
    distill_from = dir       soft targets from a teacher (distill)                Hinton et al. 2015
    swa_start, swa_every     weight averaging (swa)                               Izmailov et al. 2018
    child_tuning_p = p       update a random child network (childtune)            Xu et al. 2021
    attention_transfer_steps converted attention learns the exact one (transfer)  Kasai et al. 2021, Zhang et al. 2024
    prune = method           masks: magnitude, gradual, movement, RigL, N:M,      Zhu & Gupta 2017, Evci et al. 2020,
                             or saved ones (sparsity)                             Sanh et al. 2020

LR schemes (fixed, per-layer rates, LLRD, Nesterov SGD, cyclic / one-cycle) are not hooks: they live
in `optim.py` and `schedules.py`. All of these compose with each other and with PEFT: each hook sees
only the trainer (`TrainerView`) and the loss so far. Loss hooks run in registry order: R-Drop turns
the objective's loss into the two-pass loss, then distillation mixes that with the teacher term.
Re-init runs in setup, before PEFT is applied, so adapters wrap the fresh layers.

A new technique is one module with a `Technique` subclass plus one line in `REGISTRY`: a function
from the config to the technique, or None when the config leaves it off.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from nanoft.sparse import SparsityOptions
from nanoft.train.techniques.base import Technique, TrainerView
from nanoft.train.techniques.childtune import ChildTuning
from nanoft.train.techniques.distill import Distillation
from nanoft.train.techniques.rdrop import RDrop
from nanoft.train.techniques.reinit import ReinitTopLayers
from nanoft.train.techniques.sparsity import Sparsity
from nanoft.train.techniques.swa import SWA
from nanoft.train.techniques.transfer import AttentionTransfer
from nanoft.train.techniques.unfreeze import GradualUnfreezing

# (name, config → technique or None), in the order their hooks run
REGISTRY: List[Tuple[str, Callable[[Any], Optional[Technique]]]] = [
    ("transfer", lambda c: AttentionTransfer(c.attention_transfer_steps, c.attention_transfer_lr, c.seed)
     if c.attention_transfer_steps else None),
    ("reinit", lambda c: ReinitTopLayers(c.reinit_layers, c.seed) if c.reinit_layers else None),
    ("unfreeze", lambda c: GradualUnfreezing(c.unfreeze_every) if c.unfreeze_every is not None else None),
    ("rdrop", lambda c: RDrop(c.rdrop_alpha) if c.rdrop_alpha > 0 else None),
    ("distill", lambda c: Distillation(c.distill_from, c.distill_alpha, c.distill_temperature) if c.distill_from else None),
    ("sparsity", lambda c: Sparsity(c.prune, SparsityOptions.from_config(c)) if c.prune else None),
    ("swa", lambda c: SWA(c.swa_start, c.swa_every) if c.swa_start is not None else None),
    ("childtune", lambda c: ChildTuning(c.child_tuning_p, c.seed) if c.child_tuning_p is not None else None),
]


def build_techniques(config: Any) -> List[Technique]:
    """The techniques a TrainConfig switches on, in the order their hooks run."""
    built: List[Optional[Technique]] = [make(config) for _, make in REGISTRY]
    return [t for t in built if t is not None]


__all__ = ["build_techniques", "REGISTRY", "Technique", "TrainerView", "ReinitTopLayers", "GradualUnfreezing",
           "RDrop", "Distillation", "Sparsity", "SWA", "ChildTuning", "AttentionTransfer"]
