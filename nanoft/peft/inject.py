"""Putting PEFT methods into a model: apply, named adapters, freezing, merging, unloading.

    nanoft.peft.apply(model, "lora", r=8, alpha=16, targets=["query", "value"])

wraps the chosen layers in place (`PeftLayer`), freezes everything else and leaves the task head
trainable (`train_head=True`). Several adapters can live on one model under different names
(`add_adapter`, `set_adapter`); each then has its own copy of the task head. What was applied
is recorded on the model (`model.peft_adapters`, `model.peft_active`) so that adapter files can
be written and read back without repeating the options.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from nanoft.errors import ConfigError
from nanoft.peft import registry
from nanoft.peft.layers import HeadSwitch, PeftLayer
from nanoft.peft.targets import select


# ----------------------------------------------------------------------------- what is on a model
@dataclass
class AdapterConfig:
    """One named adapter: its method, resolved options, the layers (or, for BitFit, biases) it owns."""

    method: str
    options: Dict[str, Any]
    modules: List[str]
    train_head: bool = True

    def to_json(self) -> Dict[str, Any]:
        return {"method": self.method, "options": self.options, "modules": list(self.modules),
                "train_head": self.train_head}


def adapters_of(model: nn.Module) -> Dict[str, AdapterConfig]:
    """{name: AdapterConfig} of the adapters on `model` (empty for a plain model)."""
    return getattr(model, "peft_adapters", {})


def active_adapter(model: nn.Module) -> Optional[str]:
    return getattr(model, "peft_active", None)


def peft_layers(model: nn.Module) -> Dict[str, PeftLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PeftLayer)}


def head_module(model: nn.Module) -> Optional[nn.Module]:
    """The task head in use (the active adapter's copy when heads are switched)."""
    head = getattr(model, "head", None)
    return head.current if isinstance(head, HeadSwitch) else head


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def _wrap(model: nn.Module, name: str) -> PeftLayer:
    layer = model.get_submodule(name)
    if not isinstance(layer, PeftLayer):
        layer = PeftLayer(layer)
        _replace(model, name, layer)
    return layer


# ----------------------------------------------------------------------------- public API
def add_adapter(model: nn.Module, name: str, method: str, *, train_head: bool = True, **options: Any) -> nn.Module:
    """Add adapter `name` of `method` to `model` (inactive and frozen until `set_adapter`)."""
    existing = adapters_of(model)
    spec = registry.get(method)
    opts = registry.make_options(method, options)
    if name in existing:
        raise ConfigError(f"the model already has an adapter named {name!r}", fix="pick another name")
    if any(layer.merged is not None for layer in peft_layers(model).values()):
        raise ConfigError("cannot add an adapter while one is merged", fix="call nanoft.peft.unmerge(model) first")
    owner = next((m for m in [method, *(c.method for c in existing.values())] if not _wraps_layers(m)), None)
    if existing and owner:
        raise ConfigError(f"{owner} trains the base model's own parameters, so it cannot share a model with other "
                          "adapters", fix=f"use {owner} alone, or start from a fresh base model")

    if spec.wraps_layers:
        modules = select(model, opts.targets, method, spec.layers)
        layer_opts = spec.prepare(model, opts, modules) if spec.prepare else opts
        for module_name in modules:
            layer = _wrap(model, module_name)
            layer.add(name, spec.factory(layer.base, layer_opts, module_name))
    else:
        modules = spec.parameters(model, opts)

    if existing:
        _add_head(model, name, train_head)
    config = AdapterConfig(method, _jsonable(dataclasses.asdict(opts)), modules, train_head)
    model.peft_adapters = {**existing, name: config}
    return model


def _wraps_layers(method: str) -> bool:
    return registry.get(method).wraps_layers


def _add_head(model: nn.Module, name: str, train_head: bool) -> None:
    """Give the new adapter its own copy of the task head (the first adapter keeps the original)."""
    from nanoft.models.heads import MaskedLMHead

    head = getattr(model, "head", None)
    if head is None:
        return
    if isinstance(head, MaskedLMHead):
        if train_head or any(c.train_head for c in adapters_of(model).values()):
            raise ConfigError("several adapters on a masked-lm model share its head, so it cannot be trained per "
                              "adapter", fix="pass train_head=False")
        return
    if not isinstance(head, HeadSwitch):
        (first,) = adapters_of(model)  # a switch is made when the second adapter arrives
        head = HeadSwitch({first: head}, active=first)
        model.head = head
    head.heads[name] = copy.deepcopy(head.current)


def set_adapter(model: nn.Module, name: str) -> nn.Module:
    """Make adapter `name` the one applied (and the only one trained); unmerges first."""
    adapters = adapters_of(model)
    if name not in adapters:
        raise ConfigError(f"no adapter named {name!r} on the model",
                          fix=f"adapters: {', '.join(adapters) or '(none; use nanoft.peft.apply)'}")
    for layer in peft_layers(model).values():
        layer.set_active(name)
    if isinstance(getattr(model, "head", None), HeadSwitch):
        model.head.active = name
    model.peft_active = name
    mark_trainable(model)
    return model


def apply(model: nn.Module, method: str, *, name: str = "default", train_head: bool = True,
          **options: Any) -> nn.Module:
    """Apply a PEFT `method` in place and make it the active adapter; returns `model`.

    Methods are those registered (`nanoft.peft.names()`: lora, rslora, dora, pissa, vera, houlsby, pfeiffer, ia3,
    bitfit); `nanoft.peft.options_of(method)` lists a method's options and defaults.
    """
    add_adapter(model, name, method, train_head=train_head, **options)
    return set_adapter(model, name)


def adapter_parameters(model: nn.Module, name: Optional[str] = None) -> Dict[str, nn.Parameter]:
    """{file key: parameter} of adapter `name` (default: active): its own tensors, plus the head if trained.

    Keys are the wrapped layer's name plus the adapter's parameter name
    (`encoder.layers.0.attention.query.lora_A`), independent of how the wrappers nest.
    """
    name = name or active_adapter(model)
    adapters = adapters_of(model)
    if name not in adapters:
        raise ConfigError(f"no adapter named {name!r} on the model", fix=f"adapters: {', '.join(adapters) or '(none)'}")
    config = adapters[name]
    out: Dict[str, nn.Parameter] = {}
    if not _wraps_layers(config.method):  # the base tensors it trains
        params = dict(model.named_parameters())
        out.update({n: params[n] for n in config.modules})
    for layer_name, layer in peft_layers(model).items():
        if name in layer.adapters:
            for p_name, p in layer.adapters[name].named_parameters():
                out[f"{layer_name}.{p_name}"] = p
    if config.train_head:
        head = model.head.heads[name] if isinstance(getattr(model, "head", None), HeadSwitch) else head_module(model)
        if head is not None:
            out.update({f"head.{n}": p for n, p in head.named_parameters()})
    return out


def adapter_state(model: nn.Module, name: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Everything an adapter file holds: `adapter_parameters` plus the adapter's persistent buffers (frozen
    tensors that are not the base model's, e.g. PiSSA's initial factors or VeRA's random matrices).

    A tensor shared by several layers (VeRA's matrices) is listed once, under the first layer's name.
    """
    name = name or active_adapter(model)
    out: Dict[str, torch.Tensor] = dict(adapter_parameters(model, name))
    seen = {id(t) for t in out.values()}
    for layer_name, layer in peft_layers(model).items():
        if name in layer.adapters:
            for key, t in layer.adapters[name].state_dict(keep_vars=True).items():
                if id(t) not in seen:
                    seen.add(id(t))
                    out[f"{layer_name}.{key}"] = t
    return out


def mark_trainable(model: nn.Module) -> None:
    """requires_grad on the active adapter's tensors (and its head) only; everything else frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model).values():
        p.requires_grad_(True)


def trainable_summary(model: nn.Module) -> Dict[str, Any]:
    """{trainable, total, percent}: parameter counts (each shared tensor once)."""
    from nanoft.models import count_parameters

    total, trainable = count_parameters(model)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights (LoRA, rsLoRA, DoRA, PiSSA, VeRA, IA³); idempotent."""
    if not is_mergeable(model):  # checked first: never leave a model half merged
        raise ConfigError(f"{adapters_of(model)[active_adapter(model)].method} adapters are non-linear and cannot "
                          "be merged", fix="keep the adapter, or train a mergeable method: "
                                           + ", ".join(m for m in registry.names() if registry.get(m).mergeable))
    for layer in peft_layers(model).values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge`, restoring the base weights."""
    for layer in peft_layers(model).values():
        layer.unmerge()
    return model


def _unwrap_all(model: nn.Module) -> None:
    for layer_name, layer in peft_layers(model).items():
        _replace(model, layer_name, layer.base)
    if isinstance(getattr(model, "head", None), HeadSwitch):
        model.head = model.head.current
    for attr in ("peft_adapters", "peft_active"):
        if hasattr(model, attr):
            delattr(model, attr)
    for p in model.parameters():
        p.requires_grad_(True)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and put the plain nn.Linear / nn.Embedding layers back.

    The result is an ordinary model (all parameters trainable again) that `nanoft.save_model`
    writes as a normal checkpoint. Bottleneck adapters cannot be merged and raise ConfigError.
    """
    merge(model)
    _unwrap_all(model)
    return model


def is_peft_model(model: nn.Module) -> bool:
    """Whether any adapter (BitFit included, which adds no layers) is on `model`."""
    return bool(adapters_of(model))


def is_mergeable(model: nn.Module) -> bool:
    """Whether the active adapter folds into the weights (its method was registered mergeable)."""
    active = active_adapter(model)
    return active is None or registry.get(adapters_of(model)[active].method).mergeable


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain, merged copy of `model` for export; `model` itself keeps training unmerged."""
    if not is_mergeable(model):
        raise ConfigError(f"{adapters_of(model)[active_adapter(model)].method} adapters cannot be merged into a "
                          "plain checkpoint", fix="export the adapter file instead (nanoft.peft.save_adapter)")
    return merge_and_unload(copy.deepcopy(model))


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: back to the base model (with the active head)."""
    unmerge(model)
    _unwrap_all(model)
    return model


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove adapter `name`; layers left without adapters are unwrapped."""
    adapters = adapters_of(model)
    if name not in adapters:
        raise ConfigError(f"no adapter named {name!r} on the model", fix=f"adapters: {', '.join(adapters) or '(none)'}")
    if len(adapters) == 1:
        return unload(model)
    for layer_name, layer in peft_layers(model).items():
        if name in layer.adapters:
            if layer.merged == name:
                layer.unmerge()
            del layer.adapters[name]
            if layer.active == name:
                layer.active = None
            if not len(layer.adapters):
                _replace(model, layer_name, layer.base)
    head = getattr(model, "head", None)
    if isinstance(head, HeadSwitch):
        del head.heads[name]
        if head.active == name:
            head.active = next(iter(head.heads))
    model.peft_adapters = {k: v for k, v in adapters.items() if k != name}
    if active_adapter(model) == name:
        set_adapter(model, next(iter(model.peft_adapters)))
    return model


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


__all__ = ["apply", "add_adapter", "set_adapter", "delete_adapter", "merge", "unmerge", "merge_and_unload", "unload",
           "merged_copy", "is_mergeable", "is_peft_model",
           "trainable_summary", "adapter_parameters", "adapter_state", "adapters_of", "active_adapter",
           "mark_trainable", "AdapterConfig"]
