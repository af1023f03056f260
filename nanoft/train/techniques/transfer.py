"""Attention transfer before fine-tuning a converted attention kind (see `nanoft.train.transfer`).

Runs once, before the first step of a run (a resumed run already holds the transferred weights), on
length-sorted batches of the run's own training texts drawn from a generator seeded by the run's seed, inside a
forked RNG, so the fine-tuning that follows sees the same random stream as without it. The relative error
is measured before and after on the same few batches of the first evaluation split (else of train), kept for
exact resume and reported in results.json under `attention_transfer`.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import torch

from nanoft.train.techniques.base import Technique, TrainerView
from nanoft.train.transfer import attention_transfer, length_sorted_batches, transfer_parameters


PROBE_BATCHES = 4


class AttentionTransfer(Technique):
    name = "attention_transfer"

    def __init__(self, steps: int, lr: float, seed: int) -> None:
        self.steps, self.lr, self.seed = steps, lr, seed
        self.report: Dict[str, Any] = {}

    def setup(self, trainer: TrainerView) -> None:
        attention_transfer_check(trainer.model)

    def before_training(self, trainer: TrainerView) -> None:
        c = trainer.config
        pad = trainer.tokenizer.pad_token_id

        def batches(data: Any, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
            for indices in length_sorted_batches([int(n) for n in data.lengths], c.batch_size, seed):
                yield {k: v.to(trainer.device)
                       for k, v in trainer.objective.collate(data, indices, pad, c.pad_to_multiple_of).items()}

        # the error is measured before and after on a few batches of the first evaluation split (else train)
        probe_data = next(iter(trainer.eval_data.values()), None) or trainer.train_data
        probe_stream = batches(probe_data, self.seed + 1)
        probe = [next(probe_stream) for _ in range(min(PROBE_BATCHES, -(-len(probe_data) // c.batch_size)))]
        devices = [trainer.device] if trainer.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.report = attention_transfer(trainer.model, batches(trainer.train_data, self.seed), self.steps,
                                             self.lr, forward=lambda b: trainer.forward(b, model=trainer.model),
                                             probe=probe)
        if trainer.dist.enabled:  # every rank transferred the same way; rank 0's result is the one kept
            for p in transfer_parameters(trainer.model):
                torch.distributed.broadcast(p.data, src=0)

    def finish(self, trainer: TrainerView) -> Optional[Dict[str, Any]]:
        return {"attention_transfer": dict(self.report, lr=self.lr)} if self.report else None

    def state_dict(self) -> Dict[str, Any]:
        return {"report": dict(self.report)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.report = dict(state.get("report") or {})


def attention_transfer_check(model: Any) -> None:
    """A clear error at setup when the model's attention kind has nothing to transfer."""
    if not transfer_parameters(model):
        from nanoft.errors import ConfigError

        kind = type(model.encoder.layers[0].attention.core).__name__
        raise ConfigError(f"attention_transfer_steps needs an attention kind with parameters of its own; "
                          f"{kind} has none", fix="use it with --attention linformer, or leave it at 0")
