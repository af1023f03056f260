"""Choosing layers by name: plain names, globs or regular expressions.

Names are the model's own module paths (`encoder.layers.3.attention.query`), read through any
PEFT wrapper (a wrapped layer keeps the name of the layer it wraps). A pattern is

    "query", "ffn.output"               a name suffix on dot boundaries (every layer's query)
    "encoder.layers.*.attention.query"  a glob over the full name (fnmatch)
    "re:encoder\\.layers\\.[0-2]\\..*"  a regular expression over the full name (fullmatch)
"""
from __future__ import annotations

import fnmatch
import re
from typing import Dict, Iterable, List, Sequence, Tuple, Type

from torch import nn

from nanoft.errors import ConfigError
from nanoft.peft.layers import HeadSwitch, PeftLayer


# Every linear layer of an encoder layer, by the names `select` matches: what the LoRA paper calls applying
# LoRA to all weight matrices (LoRA's default targets, chosen by bench/results/lora_sweep.md).
ALL_LINEAR = ("query", "key", "value", "attention.output", "ffn.intermediate", "ffn.output")


def named_layers(model: nn.Module, kinds: Tuple[Type[nn.Module], ...] = (nn.Linear,)) -> Dict[str, nn.Module]:
    """{name: layer} for every layer of `kinds`, wrapped or not, outside the task head (it trains in
    full with `train_head`), attention cores and adapters."""
    out: Dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, PeftLayer):
                if isinstance(child.base, kinds):
                    out[name] = child
            elif name == "head" or isinstance(child, HeadSwitch):
                continue
            elif isinstance(child, kinds):
                out[name] = child
            elif child_name != "core":  # efficient-attention internals are not projections
                visit(child, name)

    visit(model, "")
    return out


def matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def short_names(names: Iterable[str]) -> List[str]:
    """Layer names with the per-layer prefix dropped, each once: what a user can type as a target."""
    seen: Dict[str, None] = {}
    for name in names:
        seen[re.sub(r"^encoder\.(layers\.\d+\.|embeddings\.)", "", name)] = None
    return list(seen)


def parse_targets(targets: "str | Sequence[str]") -> List[str]:
    """'query,value' or ['query', 'value'] → ['query', 'value']."""
    if isinstance(targets, str):
        targets = targets.split(",")
    return [t.strip() for t in targets if t.strip()]


def select(model: nn.Module, targets: "str | Sequence[str]", method: str,
           kinds: Tuple[Type[nn.Module], ...] = (nn.Linear,)) -> List[str]:
    """Names of the layers the patterns pick; a pattern that picks nothing is an error listing the choices."""
    patterns = parse_targets(targets)
    layers = named_layers(model, kinds)
    if not patterns:
        raise ConfigError(f"{method}: no targets given", fix=f"pass targets, e.g. {', '.join(short_names(layers)[:3])}")
    chosen = [name for name in layers if any(matches(p, name) for p in patterns)]
    unmatched = [p for p in patterns if not any(matches(p, name) for name in layers)]
    if unmatched:
        what = "linear or embedding" if nn.Embedding in kinds else "linear"
        raise ConfigError(f"{method}: target {', '.join(map(repr, unmatched))} matches no {what} layer; "
                          f"available: {', '.join(short_names(layers))}",
                          fix="use one of those names, a glob like encoder.layers.*.attention.query, or re:<regex>")
    return chosen
