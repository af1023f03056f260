"""Re-initialising the top k encoder layers (and BERT's pooler) before fine-tuning.

Zhang et al. 2021 ("Revisiting Few-sample BERT Fine-tuning") found that the top layers of a
pretrained BERT are specialised to the pretraining objective and that re-initialising them
(plus the pooler) makes fine-tuning on small tasks more stable. The new weights follow BERT's
init (N(0, 0.02) weights, zero biases, unit LayerNorm), drawn from a generator seeded by the run's
seed inside a forked RNG, so the rest of the run (dropout, data order) sees the same random
stream as without re-init, and every other tensor stays bit-identical to the checkpoint.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from nanoft.errors import ConfigError
from nanoft.models.encoder import init_weights
from nanoft.weights.family import get_family
from nanoft.train.techniques.base import Technique, TrainerView

_STANDARD = (nn.Linear, nn.Embedding, nn.LayerNorm)


def reinit_modules(model: nn.Module, k: int) -> List[nn.Module]:
    """The modules re-init touches: the top `k` encoder layers, and the pooler (BERT's head.dense)."""
    layers = model.encoder.layers
    if k > len(layers):
        raise ConfigError(f"reinit_layers={k} but the model has only {len(layers)} encoder layers",
                          fix=f"use --reinit-layers between 0 and {len(layers)}")
    modules: List[nn.Module] = list(layers[len(layers) - k:]) if k else []
    head = getattr(model, "head", None)
    # only a family with a pretrained pooler (BERT) has one in head.dense; RoBERTa/DistilBERT's is part of
    # the task head, and a masked-LM head's dense layer is no pooler
    pooled = get_family(model.config.family).has_pooler and getattr(model, "head_kind", None) in (
        "classification", "regression")
    if k and pooled and head is not None and hasattr(head, "dense"):
        modules.append(head.dense)
    return modules


def reinit_top_layers(model: nn.Module, k: int, seed: int, std: float = 0.02) -> List[str]:
    """Re-initialise the top `k` layers (and pooler) in place; returns the names of the tensors changed."""
    modules = reinit_modules(model, k)
    if any(getattr(m, "is_peft_layer", False) for module in modules for m in module.modules()):
        # init_weights would overwrite the adapters' own init (LoRA's B = 0): re-init comes first
        raise RuntimeError("re-init must run before PEFT is applied")
    touched = {id(p) for m in modules for p in m.parameters()}
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in modules:
            init_weights(module, std=std)
            for sub in module.modules():  # attention cores with their own parameters (Linformer, …)
                reset = getattr(sub, "reset_parameters", None)
                if reset is not None and not isinstance(sub, _STANDARD):
                    reset()
    return [name for name, p in model.named_parameters() if id(p) in touched]


class ReinitTopLayers(Technique):
    """`reinit_layers = k`: fresh top-k layers and pooler, done once in setup (before PEFT is applied)."""

    name = "reinit"

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seed = seed
        self.reinitialised: List[str] = []

    def setup(self, trainer: TrainerView) -> None:
        self.reinitialised = reinit_top_layers(trainer.model, self.k, self.seed)

    def finish(self, trainer: TrainerView):
        return {"reinit": {"layers": self.k, "tensors": len(self.reinitialised)}}
