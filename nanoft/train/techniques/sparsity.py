"""Sparse fine-tuning: `prune = METHOD` keeps masks on the encoder's weights through training.

The pruning methods live in `nanoft.sparse` (magnitude one-shot, gradual magnitude, movement, RigL, N:M,
saved masks); this
technique only calls their hooks: the masks are set on the loaded model in `setup` (one-shot methods
prune there), applied to the gradients after clipping and before the optimizer step (RigL moves them
there, using the dense gradient), and applied to the weights after every step (gradual pruning
raises the sparsity there). Masks are part of the technique state, so a resumed run is bit-exact;
`finish` writes them to RUN/masks.safetensors and adds the sparsity, counted three ways, to results.
Every exported model (RUN/best/ …) gets its masks.safetensors beside it, so `--prune keep --model
RUN/best` continues sparse training from it; `--prune keep` reads the --model directory's masks
unless --prune-masks names others.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Optional

import torch

from nanoft import sparse
from nanoft.errors import ConfigError
from nanoft.train.techniques.base import Technique, TrainerView

MASKS_FILE = sparse.MASKS_FILE


class Sparsity(Technique):
    name = "sparsity"

    def __init__(self, method: str, options: sparse.SparsityOptions) -> None:
        sparse.check(method, options)
        self.method, self.options = method, options
        self.pruner: Optional[sparse.Pruner] = None

    def setup(self, trainer: TrainerView) -> None:
        if trainer.config.peft:
            raise ConfigError(f"--prune cannot be combined with --peft {trainer.config.peft}",
                              fix="prune with full fine-tuning (merging an adapter would fill the zeros back in)")
        if getattr(sparse.get(self.method), "from_masks", False) and self.options.prune_masks is None:
            self.options = replace(self.options, prune_masks=str(trainer.config.model))
        self.pruner = sparse.build(self.method, trainer.model, self.options)
        self.pruner.setup()

    def before_optimizer_step(self, trainer: TrainerView) -> None:
        self.pruner.before_optimizer_step(trainer.step + 1, trainer.total_steps, trainer.optimizer)

    def after_step(self, trainer: TrainerView) -> None:
        self.pruner.after_step(trainer.step, trainer.total_steps, trainer.optimizer)

    def may_be_best(self, trainer: TrainerView) -> bool:
        """Only once the masks reach the target sparsity (gradual and movement pruning get there at --prune-end,
        one-shot at --prune-start): an earlier, denser model never becomes `best/`."""
        pruned = sum(int(m.numel() - m.count_nonzero()) for m in self.pruner.masks.values())
        total = sum(m.numel() for m in self.pruner.masks.values())
        return pruned >= self.pruner.target * total - len(self.pruner.masks)  # per-tensor rounding: one weight each

    def export_files(self, model: torch.nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
        """masks.safetensors for a model being exported, if its weights hold the masks' zeros (an SWA average
        of weights pruned along the way may not: then no masks are written beside it)."""
        params = dict(model.named_parameters())
        if self.pruner is None or any(name not in params or bool(params[name].detach()[~mask.to(params[name].device)]
                                                                  .any()) for name, mask in self.pruner.masks.items()):
            return {}
        return {MASKS_FILE: {n: m.to("cpu") for n, m in self.pruner.masks.items()}}

    def finish(self, trainer: TrainerView) -> Dict[str, Any]:
        if trainer.dist.is_main:
            from nanoft.weights.safetensors_io import save_file

            save_file({n: m.to("cpu") for n, m in self.pruner.masks.items()}, trainer.run_dir / MASKS_FILE,
                      metadata={"format": "pt", "method": self.method})
        report = sparse.sparsity_report(trainer.model, self.pruner.masks)
        return {"sparsity": {"method": self.method, "target": self.pruner.target, **report}}

    def state_dict(self) -> Dict[str, Any]:
        return self.pruner.state_dict() if self.pruner is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.pruner.load_state_dict(state)
