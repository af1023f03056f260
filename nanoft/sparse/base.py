"""What every pruning method shares: the options, the choice of weights, masks and how they are kept.

A `Pruner` holds one boolean mask per chosen weight (True = kept). The masks live beside the
model, not inside it, so the model's state dict stays the plain Hugging Face layout and a pruned
model exports with its zeros in place. The loop calls two hooks each optimizer step:

    before_optimizer_step(step)  grad ← grad ⊙ mask (RigL first updates the masks here: it needs the gradient)
    after_step(step)             w ← w ⊙ mask        (gradual pruning first updates the masks here)

Masking the gradient keeps AdamW's moments of a pruned weight at zero, and whenever a mask changes the
optimizer's per-weight state (moments, momentum) is zeroed where the mask is False; masking the weight
after the step then also undoes weight decay or anything else that moved it. So a pruned weight stays
exactly zero, and a weight that RigL grows starts from zero with fresh optimizer state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from nanoft.errors import CheckpointError, ConfigError

DISTRIBUTIONS = ("uniform", "global", "erk")


@dataclass
class SparsityOptions:
    """Options of every pruning method (each method reads the ones it needs); the defaults of the
    `nanoft train` sparsity flags, which carry the same names."""

    sparsity: Optional[float] = field(default=None, metadata={"help": "Fraction of the chosen weights set to zero, "
                                      "in [0, 1); an N:M method implies 1 − N/M.",
                                      "unset": "none: needed unless --prune N:M"})
    sparsity_initial: float = field(default=0.0, metadata={"help": "Gradual pruning: sparsity at --prune-start "
                                    "(the cubic schedule's s_i)."})
    sparsity_distribution: str = field(default="uniform", metadata={
        "help": "How sparsity is spread: uniform (each matrix the same), global (one magnitude threshold over all), "
                "erk (Erdős–Rényi-Kernel: smaller matrices stay denser).", "choices": list(DISTRIBUTIONS)})
    sparsity_targets: List[str] = field(default_factory=list, metadata={
        "help": "Layers to prune: names, globs or re:<regex>, as PEFT targets (e.g. query,value or "
                "encoder.layers.*.ffn.*).", "unset": "every encoder linear layer"})
    sparsity_embeddings: bool = field(default=False, metadata={"help": "Also prune the embedding matrices."})
    sparsity_head: bool = field(default=False, metadata={"help": "Also prune the task head's linear layers."})
    prune_start: float = field(default=0.1, metadata={"help": "Gradual / RigL: first pruning or mask-update step, "
                               "a fraction of training (< 1) or a step (>= 1)."})
    prune_end: float = field(default=0.7, metadata={"help": "Gradual: step the final sparsity is reached; RigL: "
                             "no mask updates from here on. A fraction (< 1) or a step (>= 1)."})
    prune_every: int = field(default=100, metadata={"help": "Gradual / RigL: steps between pruning or mask updates."})
    rigl_fraction: float = field(default=0.3, metadata={"help": "RigL: fraction α of each layer's non-zeros "
                                 "dropped and regrown at the first update, cosine-decayed to 0 at --prune-end."})
    prune_masks: Optional[str] = field(default=None, metadata={
        "help": "--prune keep: the saved masks to train on with (a pruned run or model directory, or its "
                "masks.safetensors); applied from step 0, never regrown.", "metavar": "PATH",
        "unset": "the --model directory"})

    @classmethod
    def from_config(cls, config: Any) -> "SparsityOptions":
        """The options a TrainConfig (or any object with these attributes) holds."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def check(self) -> "SparsityOptions":
        """Values that are wrong whatever the method: one ConfigError line each."""
        s = self.sparsity
        checks = [
            (s is None or 0 <= s < 1, f"sparsity must be in [0, 1), got {s}"),
            (0 <= self.sparsity_initial < 1, f"sparsity_initial must be in [0, 1), got {self.sparsity_initial}"),
            (s is None or self.sparsity_initial <= s,
             f"sparsity_initial ({self.sparsity_initial}) must not exceed sparsity ({s})"),
            (self.sparsity_distribution in DISTRIBUTIONS,
             f"sparsity_distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.sparsity_distribution!r}"),
            (self.prune_start >= 0, f"prune_start must be ≥ 0, got {self.prune_start}"),
            (self.prune_end > 0, f"prune_end must be > 0, got {self.prune_end}"),
            (self.prune_every >= 1, f"prune_every must be ≥ 1, got {self.prune_every}"),
            (0 < self.rigl_fraction <= 1, f"rigl_fraction must be in (0, 1], got {self.rigl_fraction}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if (self.prune_start < 1) == (self.prune_end < 1) and self.prune_start >= self.prune_end:
            raise ConfigError(f"prune_start ({self.prune_start:g}) must come before prune_end ({self.prune_end:g})")
        return self


def step_of(value: float, total_steps: int) -> int:
    """A fraction of training (< 1) or a step count (>= 1) as a step."""
    return int(round(value * total_steps)) if value < 1 else int(value)


def window(options: SparsityOptions, total_steps: int) -> "tuple[int, int]":
    """(start, end) steps of the pruning / update window; end after start, else a ConfigError."""
    start, end = step_of(options.prune_start, total_steps), step_of(options.prune_end, total_steps)
    if start >= end:
        raise ConfigError(f"prune_start ({options.prune_start:g}) is step {start}, not before prune_end "
                          f"({options.prune_end:g}) = step {end} of {total_steps}",
                          fix="start pruning earlier or end it later")
    return start, end


# ------------------------------------------------------------------ which weights
def select_weights(model: nn.Module, options: SparsityOptions) -> Dict[str, nn.Parameter]:
    """{parameter name: weight} of the layers to prune: the target patterns (default every encoder linear
    layer), plus the embeddings and the head's linear layers when asked."""
    from nanoft.peft.targets import named_layers, select

    layers = named_layers(model)
    names = select(model, options.sparsity_targets, "sparsity") if options.sparsity_targets else list(layers)
    chosen = {f"{name}.weight": layers[name].weight for name in names}
    if options.sparsity_embeddings:
        for name, layer in named_layers(model, (nn.Embedding,)).items():
            chosen[f"{name}.weight"] = layer.weight
    if options.sparsity_head:
        head = getattr(model, "head", None)
        for name, layer in (head.named_modules() if head is not None else []):
            if isinstance(layer, nn.Linear):
                chosen[f"head.{name}.weight"] = layer.weight
    if not chosen:
        raise ConfigError("sparsity: no layer to prune", fix="check --sparsity-targets")
    return chosen


# ------------------------------------------------------------------ masks by magnitude
def keep_largest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """A bool mask (shape of `scores`) that is True at the `keep` largest scores; ties go to the lower index."""
    flat = scores.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[order[:keep]] = True
    return mask.view_as(scores)


def erk_densities(shapes: Dict[str, torch.Size], density: float) -> Dict[str, float]:
    """Erdős–Rényi-Kernel densities (Evci et al. 2020): density_l ∝ (n_in + n_out) / (n_in · n_out), scaled
    so the kept weights total `density` of all; a layer that would exceed 1 stays dense and the rest re-scale."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    dense: set = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        eps = budget / max(1e-12, sum(raw[n] * sizes[n] for n in sizes if n not in dense))
        over = [n for n in sizes if n not in dense and eps * raw[n] > 1]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in sizes}
        dense.update(over)


def magnitude_masks(weights: Dict[str, torch.Tensor], sparsity: float, distribution: str,
                    masks: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Masks that zero the smallest-magnitude `sparsity` of the weights: per matrix (uniform, erk) or under
    one threshold (global). Counts are exact: round(s · n) zeros per matrix, or over all for global.
    Weights already masked out (`masks` False) are pruned first, so masks only ever shrink."""
    return score_masks({n: w.detach().abs().float() for n, w in weights.items()}, sparsity, distribution, masks)


def score_masks(scores: Dict[str, torch.Tensor], sparsity: float, distribution: str,
                masks: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Masks that keep the highest `scores` (|w| for magnitude, movement for movement pruning) and zero the
    lowest `sparsity` of them, per matrix (uniform, erk) or over all (global); entries already masked out
    (`masks` False) are pruned first whatever their score, so masks only ever shrink."""
    if masks is not None:
        scores = {n: torch.where(masks[n], s, torch.full_like(s, float("-inf"))) for n, s in scores.items()}
    if distribution == "global":
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        keep = keep_largest(flat, flat.numel() - int(round(sparsity * flat.numel())))
        out, offset = {}, 0
        for name, s in scores.items():
            out[name] = keep[offset:offset + s.numel()].view_as(s)
            offset += s.numel()
        return out
    if distribution == "erk":
        densities = erk_densities({n: s.shape for n, s in scores.items()}, 1.0 - sparsity)
    else:
        densities = {n: 1.0 - sparsity for n in scores}
    return {n: keep_largest(s, s.numel() - int(round((1.0 - densities[n]) * s.numel()))) for n, s in scores.items()}


# ------------------------------------------------------------------ the pruner
class Pruner:
    """Masks on `weights` and the two per-step hooks (see the module docstring). Subclasses decide when
    and how the masks change; the base keeps them applied."""

    name = ""

    @classmethod
    def choose_weights(cls, model: nn.Module, options: SparsityOptions) -> Dict[str, nn.Parameter]:
        """The weights this method masks (by default the target patterns: `select_weights`)."""
        return select_weights(model, options)

    def __init__(self, weights: Dict[str, nn.Parameter], options: SparsityOptions) -> None:
        self.weights = weights
        self.options = options.check()
        self.masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}

    @property
    def target(self) -> float:
        """The sparsity the method ends at."""
        return float(self.options.sparsity or 0.0)

    def setup(self) -> None:
        """Once, on the loaded model, before an optimizer exists (one-shot methods prune here)."""

    def update_masks(self, step: int, total_steps: int, grads: bool) -> Optional[Dict[str, torch.Tensor]]:
        """New masks at `step`, or None to keep them. `grads`: called before the optimizer step (gradients
        present) rather than after it."""
        return None

    def before_optimizer_step(self, step: int, total_steps: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """`step`: the 1-based number of the optimizer step about to be taken."""
        new = self.update_masks(step, total_steps, grads=True)
        if new is not None:
            self.set_masks(new, optimizer)
        for name, w in self.weights.items():
            if w.grad is not None:
                w.grad.mul_(self.masks[name])

    def after_step(self, step: int, total_steps: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """`step`: the number of optimizer steps taken, this one included."""
        new = self.update_masks(step, total_steps, grads=False)
        if new is not None:
            self.set_masks(new, optimizer)
        else:
            self.apply()

    def set_masks(self, masks: Dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Replace the masks; zero the newly masked weights, and the optimizer state of every weight that is
        masked or newly grown (a grown weight starts afresh)."""
        survivors = {}
        for name, mask in masks.items():
            mask = mask.to(self.masks[name].device)
            survivors[name] = mask & self.masks[name]
            self.masks[name] = mask
        self.apply()
        if optimizer is not None:
            for name, keep in survivors.items():
                w = self.weights[name]
                for value in optimizer.state.get(w, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == w.shape:
                        value.mul_(keep)

    @torch.no_grad()
    def apply(self) -> None:
        """w ← w ⊙ mask for every masked weight."""
        for name, w in self.weights.items():
            w.mul_(self.masks[name])

    def state_dict(self) -> Dict[str, Any]:
        return {"method": self.name, "masks": {n: m.cpu().clone() for n, m in self.masks.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        saved = state.get("masks") if isinstance(state, dict) else None
        if state.get("method") != self.name or not isinstance(saved, dict) or set(saved) != set(self.masks):
            raise CheckpointError("the checkpoint's sparsity masks do not fit this run's pruning method and targets",
                                  fix="resume with the same --prune and --sparsity-* options")
        for name, mask in saved.items():
            if mask.shape != self.masks[name].shape:
                raise CheckpointError(f"sparsity mask {name!r} has shape {tuple(mask.shape)}, "
                                      f"expected {tuple(self.masks[name].shape)}")
            self.masks[name] = mask.to(self.masks[name].device, torch.bool)
        self.apply()
