"""Parameter groups and optimizers.

Every parameter lands in exactly one group, keyed by (layer depth, weight decay or not):
biases and LayerNorm weights get no decay; with layer-wise LR decay (LLRD, Howard & Ruder 2018;
Sun et al. 2019) the head trains at the top rate and each layer below at `decay` times the one
above, embeddings lowest. Frozen parameters stay in their group but, having no gradient, get no
optimizer state — so unfreezing later is just `requires_grad_(True)`.

LoRA+ (Hayou et al., 2024) splits each group once more: every LoRA B matrix (`*.lora_B`: lora, rslora,
dora, pissa) trains at `lora_plus_ratio` × its group's rate, A at the rate itself.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from nanoft.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i+1 for encoder layer i, num_layers+1 for the head (and anything above)."""
    if ".embeddings." in f".{name}":
        return 0
    m = _LAYER_RE.search(name)
    if m:
        return int(m.group(1)) + 1
    return num_layers + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, LayerNorm weights and other 1-d vectors are not decayed."""
    return param.ndim < 2 or "norm" in name.lower()


def layer_rates(lr: float, num_layers: int, layerwise_lr_decay: Optional[float] = None,
                layer_lrs: Optional[Sequence[float]] = None) -> List[float]:
    """Learning rate per depth (embeddings, layer 0 … layer L-1, head)."""
    depths = num_layers + 2
    if layer_lrs is not None:
        if len(layer_lrs) != depths:
            raise ConfigError(f"layer_lrs needs {depths} rates (embeddings, {num_layers} layers, head), "
                              f"got {len(layer_lrs)}")
        return [float(x) for x in layer_lrs]
    if layerwise_lr_decay is None:
        return [lr] * depths
    if not 0.0 < layerwise_lr_decay <= 1.0:
        raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay}",
                          fix="typical values are 0.8–0.95")
    top = depths - 1
    return [lr * layerwise_lr_decay ** (top - d) for d in range(depths)]


def is_lora_b(name: str) -> bool:
    """A LoRA-family B matrix (the output side of the low-rank update), which LoRA+ trains faster."""
    return name.endswith("lora_B")


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.01,
                 layerwise_lr_decay: Optional[float] = None,
                 layer_lrs: Optional[Sequence[float]] = None, lora_plus_ratio: Optional[float] = None) -> List[Dict]:
    num_layers = model.config.num_layers
    rates = layer_rates(lr, num_layers, layerwise_lr_decay, layer_lrs)
    if lora_plus_ratio is not None:
        if not lora_plus_ratio > 0:
            raise ConfigError(f"lora_plus_ratio must be > 0, got {lora_plus_ratio}", fix="the paper uses 2–16")
        if not any(is_lora_b(n) and p.requires_grad for n, p in model.named_parameters()):
            raise ConfigError("--lora-plus-ratio sets the rate of LoRA's B matrices, but the model trains none",
                              fix="use it with --peft lora, rslora, dora or pissa, or drop it")
    groups: Dict[tuple, Dict] = {}
    for name, p in model.named_parameters():
        depth = layer_depth(name, num_layers)
        decay = 0.0 if no_weight_decay(name, p) else weight_decay
        plus = lora_plus_ratio is not None and is_lora_b(name)
        key = (depth, decay, plus)
        if key not in groups:
            rate = rates[depth] * lora_plus_ratio if plus else rates[depth]
            groups[key] = {"params": [], "names": [], "lr": rate, "weight_decay": decay, "depth": depth}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(groups: List[Dict], name: str = "adamw", lr: float = 5e-5, betas=(0.9, 0.999),
                    eps: float = 1e-8, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "adamw":
        # fused: one kernel over all tensors (on CPU ~3x faster than foreach for MiniLM, whose
        # 11.7M-row word embedding makes the optimizer step a fifth of a training step)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ConfigError(f"unknown optimizer {name!r}", fix=f"use {' or '.join(OPTIMIZERS)}")
