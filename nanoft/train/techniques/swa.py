"""Stochastic Weight Averaging (Izmailov et al. 2018).

From `swa_start` on (a fraction of all steps if < 1, else a step number), every `swa_every`
optimizer steps the current weights join a running mean,

    avg ← avg + (w − avg) / (n + 1),    n ← n + 1,

so after n snapshots `avg` is their plain mean. The models here have only LayerNorm (no
BatchNorm), whose statistics are per-token and not running, so SWA's usual BatchNorm update pass
is not needed. Training itself is unchanged (the global LR schedule applies; SWA's constant or
cyclic rate is `--schedule constant|cyclic`). At the end the averaged model is evaluated on the
eval splits and saved to `run_dir/swa` (HF layout, like `best/`); its metrics go to results.json
under "swa". Every parameter is averaged, frozen ones too (gradual unfreezing may thaw them between
snapshots), which costs one fp32 copy of the model.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from nanoft.errors import ConfigError
from nanoft.train.techniques.base import Technique, TrainerView


def swa_start_step(start: float, total_steps: int) -> int:
    """The first step (1-based, after its optimizer update) whose weights are averaged."""
    step = max(1, math.ceil(start * total_steps)) if start < 1 else int(start)
    if step > total_steps:
        raise ConfigError(f"swa_start={start:g} is step {step}, after the last step ({total_steps})",
                          fix="use a fraction below 1 (e.g. --swa-start 0.75) or a step ≤ the run's steps")
    return step


class SWA(Technique):
    name = "swa"

    def __init__(self, start: float, every: int = 1) -> None:
        if start <= 0:
            raise ConfigError(f"swa_start must be > 0, got {start:g}")
        if every < 1:
            raise ConfigError(f"swa_every must be ≥ 1, got {every}")
        self.start = start
        self.every = every
        self.start_step: Optional[int] = None
        self.count = 0
        self.average: Dict[str, torch.Tensor] = {}

    def setup(self, trainer: TrainerView) -> None:
        max_steps = trainer.config.max_steps
        if max_steps:  # total steps known already: fail before anything is trained or written
            swa_start_step(self.start, max_steps)

    def loss(self, trainer: TrainerView, batch, logits, loss):
        if self.start_step is None:  # total_steps exists from here on (after setup)
            self.start_step = swa_start_step(self.start, trainer.total_steps)
        return loss

    def after_step(self, trainer: TrainerView) -> None:
        if self.start_step is None:
            self.start_step = swa_start_step(self.start, trainer.total_steps)
        step = trainer.step
        if step < self.start_step or (step - self.start_step) % self.every:
            return
        self.update(trainer.model)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Add the model's current weights to the running mean."""
        for name, p in model.named_parameters():
            w = p.detach().float()
            if name not in self.average:
                self.average[name] = torch.zeros_like(w)
            avg = self.average[name].to(w.device)
            avg += (w - avg) / (self.count + 1)
            self.average[name] = avg
        self.count += 1

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's weights with the averaged ones (calling it twice restores the model)."""
        params = dict(model.named_parameters())
        for name, avg in self.average.items():
            p = params[name]
            current = p.detach().float().clone()
            p.copy_(avg.to(p.device, p.dtype))
            self.average[name] = current.to(avg.device)

    def finish(self, trainer: TrainerView):
        if not self.count:
            return {"swa": None}
        self.swap(trainer.model)
        try:
            per_split = {split: trainer.evaluate(split) for split in trainer.eval_data}
            if trainer.dist.is_main:
                trainer.export(trainer.run_dir / "swa")
        finally:
            self.swap(trainer.model)
        main = next(iter(per_split.values()), {})
        return {"swa": {k: v for k, v in main.items() if k != "loss"},
                "swa_info": {"start_step": self.start_step, "every": self.every, "snapshots": self.count,
                             "metrics": per_split}}

    def state_dict(self):
        return {"count": self.count, "average": {k: v.cpu() for k, v in self.average.items()},
                "start_step": self.start_step}

    def load_state_dict(self, state) -> None:
        self.count = state["count"]
        self.average = dict(state["average"])
        self.start_step = state.get("start_step")
