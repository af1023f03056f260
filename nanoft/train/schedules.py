"""Learning-rate schedules as plain functions of the step: lr(step) = base_lr · factor(step).

Each factor is the formula from its paper, written out, so a test can compare the curve with
the formula and a reader can see what "cosine" or "one-cycle" means here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List

from nanoft.errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine", "cyclic", "one-cycle")


@dataclass
class ScheduleConfig:
    name: str = "linear"
    total_steps: int = 1000
    warmup_steps: int = 0
    min_ratio: float = 0.0  # cosine/linear floor as a fraction of the base lr
    cycle_steps: int = 2000  # cyclic triangular: steps per half cycle ("step size" of Smith 2017)
    cyclic_base_ratio: float = 0.1  # cyclic: lowest lr as a fraction of the peak
    one_cycle_pct: float = 0.3  # one-cycle: fraction of steps spent rising
    one_cycle_div: float = 25.0  # one-cycle: initial lr = peak / div
    one_cycle_final_div: float = 1e4  # one-cycle: final lr = initial / final_div


def factor_fn(cfg: ScheduleConfig) -> Callable[[int], float]:
    """factor(step) for the configured schedule; `step` counts optimizer steps from 0."""
    if cfg.name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.name!r}", fix=f"use one of {', '.join(SCHEDULES)}")
    total, warm = max(1, cfg.total_steps), max(0, cfg.warmup_steps)

    def warmup(step: int) -> float:
        return (step + 1) / warm if step < warm else 1.0

    if cfg.name == "constant":
        return lambda step: warmup(step)
    if cfg.name == "linear":
        def linear(step: int) -> float:
            if step < warm:
                return warmup(step)
            progress = (step - warm) / max(1, total - warm)
            return max(cfg.min_ratio, 1.0 - progress * (1.0 - cfg.min_ratio))
        return linear
    if cfg.name == "cosine":
        def cosine(step: int) -> float:
            if step < warm:
                return warmup(step)
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return cfg.min_ratio + (1 - cfg.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return cosine
    if cfg.name == "cyclic":
        def triangular(step: int) -> float:
            # Smith (2017): cycle = floor(1 + it/(2s)); x = |it/s - 2·cycle + 1|; lr = lo + (hi-lo)·max(0, 1-x)
            s = max(1, cfg.cycle_steps)
            cycle = math.floor(1 + step / (2 * s))
            x = abs(step / s - 2 * cycle + 1)
            return cfg.cyclic_base_ratio + (1 - cfg.cyclic_base_ratio) * max(0.0, 1 - x)
        return triangular

    def one_cycle(step: int) -> float:
        # Smith & Topin (2018), cosine annealing form (as torch's OneCycleLR): rise then fall.
        initial = 1.0 / cfg.one_cycle_div
        final = initial / cfg.one_cycle_final_div
        up = max(1, int(cfg.one_cycle_pct * total))
        if step < up:
            p = step / up
            return initial + (1 - initial) * 0.5 * (1 - math.cos(math.pi * p))
        p = min(1.0, (step - up) / max(1, total - up))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
    return one_cycle


class Scheduler:
    """Sets each param group's lr to its own base lr × factor(step); resumable via state_dict."""

    def __init__(self, optimizer, cfg: ScheduleConfig) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.factor = factor_fn(cfg)
        self.step_count = 0
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, int]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
