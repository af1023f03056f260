"""Sparsity counted honestly, three ways, by counting zeros in the tensors themselves.

A "80% sparse BERT" whose encoder linears are 80% zero is far less sparse over all its parameters,
since embeddings, biases and LayerNorms stay dense (one project reported 79.58% as 80%). So:

    pruned          the masked tensors only (what --sparsity asks for)
    encoder_linear  every linear weight of the encoder, pruned or not
    encoder         every encoder parameter: embeddings, biases, LayerNorms included
    model           every parameter, the task head included
    layers          each masked tensor's own sparsity
    blocks          per part of the model (embeddings, layer 0, layer 1 …, head): its linear weights, all its
                    parameters and its pruned tensors, each as zeros / total / sparsity
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

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
        "blocks": block_report(model, pruned),
    }


def block_of(name: str) -> str:
    """The part of the model a parameter belongs to: "embeddings", "layer 3", "head" …"""
    found = re.match(r"(?:.*\.)?layers\.(\d+)\.", name)
    if found:
        return f"layer {found.group(1)}"
    if ".embeddings." in f".{name}":
        return "embeddings"
    return name.split(".")[0]


def block_report(model: nn.Module, pruned: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, Any]]:
    """{block: {"linear", "all", "pruned"}} counts per embeddings / encoder layer / head, in model order
    ("linear" and "pruned" are None for a block without such tensors)."""
    pruned = set(pruned or [])
    linear = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    groups: Dict[str, Dict[str, list]] = {}
    for name, p in model.named_parameters():
        g = groups.setdefault(block_of(name), {"linear": [], "all": [], "pruned": []})
        g["all"].append(p)
        if name in linear:
            g["linear"].append(p)
        if name in pruned:
            g["pruned"].append(p)
    return {block: {kind: _count(ts) if ts else None for kind, ts in g.items()} for block, g in groups.items()}


def describe_sparsity(model: nn.Module, directory: Optional["str | Path"] = None) -> List[str]:
    """`nanoft info` lines: the sparsity read from the weights' zeros, in total and per block; the pruned
    tensors are those of `directory`/masks.safetensors when there is one (checked like `--prune keep`'s)."""
    from nanoft.sparse.keep import MASKS_FILE, load_masks

    params = dict(model.named_parameters())
    masks_file = Path(directory) / MASKS_FILE if directory is not None else None
    pruned: List[str] = []
    if masks_file is not None and masks_file.is_file():
        headless = getattr(model, "head", None) is None  # `info` loads no head: its masks are not checked
        pruned = list(load_masks(masks_file, params, skip=("head.",) if headless else ()))
    report = sparsity_report(model, pruned)

    def pct(count: Optional[Dict[str, Any]]) -> str:
        return "-" if count is None else f"{count['sparsity']:.2%}"

    def total(label: str, count: Dict[str, Any]) -> str:
        return f"  {label:<16}{pct(count):>8}  ({count['zeros']:,} zeros of {count['total']:,})"

    where = f"masks {masks_file} ({len(pruned)} tensors)" if pruned else f"no {MASKS_FILE} beside the model"
    lines = [f"sparsity:   zeros counted in the weights; {where}"]
    if pruned:
        lines.append(total("pruned tensors", report["pruned"]))
    lines += [total("encoder linears", report["encoder_linear"]),
              total("all parameters", report["model"]) + " — embeddings, biases, LayerNorms included",
              f"  {'per block':<16}{'linears':>8}{'all':>9}{'pruned':>9}"]
    for block, counts in report["blocks"].items():
        lines.append(f"  {block:<16}{pct(counts['linear']):>8}{pct(counts['all']):>9}{pct(counts['pruned']):>9}")
    return lines
