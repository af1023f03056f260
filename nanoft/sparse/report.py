"""Sparsity counted honestly, three ways, by counting zeros in the tensors themselves.

A "80% sparse BERT" whose encoder linears are 80% zero is far less sparse over all its parameters,
since embeddings, biases and LayerNorms stay dense (one project reported 79.58% as 80%). So:

    pruned          the masked tensors only (what --sparsity asks for)
    encoder_linear  every linear weight of the encoder, pruned or not
    encoder         every encoder parameter: embeddings, biases, LayerNorms included
    model           every parameter, the task head included
    layers          each masked tensor's own sparsity
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn


def _count(tensors: Iterable[torch.Tensor]) -> Dict[str, Any]:
    zeros = total = 0
    for t in tensors:
        zeros += int((t.detach() == 0).sum())
        total += t.numel()
    return {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0}


def sparsity_report(model: nn.Module, pruned: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Zeros / total / sparsity of the `pruned` parameter names, of the encoder's linear weights, of all
    encoder parameters and of the whole model; plus each pruned tensor's sparsity."""
    params = dict(model.named_parameters())
    pruned = list(pruned or [])
    encoder = getattr(model, "encoder", model)
    linear = [m.weight for m in encoder.modules() if isinstance(m, nn.Linear)]
    return {
        "pruned": _count(params[n] for n in pruned),
        "encoder_linear": _count(linear),
        "encoder": _count(encoder.parameters()),
        "model": _count(params.values()),
        "layers": {n: round(_count([params[n]])["sparsity"], 6) for n in pruned},
    }
