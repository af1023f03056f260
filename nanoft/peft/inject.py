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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

from nanoft.errors import ConfigError
from nanoft.peft.adapters import NON_LINEARITIES, BottleneckAdapter
from nanoft.peft.ia3 import IA3Adapter
from nanoft.peft.layers import HeadSwitch, PeftLayer
from nanoft.peft.lora import LoraAdapter
from nanoft.peft.targets import matches, parse_targets, select, short_names


# ----------------------------------------------------------------------------- options per method
@dataclass
class LoraOptions:
    """r: rank; alpha: scale numerator (s = alpha/r, rsLoRA alpha/sqrt r); targets: layer patterns."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Sequence[str] = ("query", "value")
    rslora: bool = False
    dora: bool = False
    init: str = "kaiming"

    def __post_init__(self) -> None:
        _require(isinstance(self.r, int) and self.r > 0, f"lora r must be a positive int, got {self.r!r}")
        _require(self.alpha > 0, f"lora alpha must be > 0, got {self.alpha!r}")
        _require(0 <= self.dropout < 1, f"lora dropout must be in [0, 1), got {self.dropout!r}")
        _require(self.init in ("kaiming", "gaussian"), f"lora init must be kaiming or gaussian, got {self.init!r}")


@dataclass
class IA3Options:
    """targets: layers to scale; feedforward: those among them whose *input* is scaled (FFN activation)."""

    targets: Sequence[str] = ("key", "value", "ffn.output")
    feedforward: Sequence[str] = ("ffn.output",)


@dataclass
class BottleneckOptions:
    """reduction_factor: hidden / bottleneck width; targets: linears whose output gets an adapter."""

    reduction_factor: int = 16
    non_linearity: str = "swish"
    targets: Sequence[str] = ("attention.output", "ffn.output")

    def __post_init__(self) -> None:
        _require(isinstance(self.reduction_factor, int) and self.reduction_factor > 0,
                 f"adapter reduction_factor must be a positive int, got {self.reduction_factor!r}")
        _require(self.non_linearity in NON_LINEARITIES,
                 f"adapter non_linearity must be one of {', '.join(NON_LINEARITIES)}, got {self.non_linearity!r}")


@dataclass
class BitFitOptions:
    """targets: modules whose biases train (None: every bias in the encoder)."""

    targets: Optional[Sequence[str]] = None


# method → (options class, defaults that differ from the class's)
METHODS: Dict[str, Tuple[type, Dict[str, Any]]] = {
    "lora": (LoraOptions, {}),
    "rslora": (LoraOptions, {"rslora": True}),
    "dora": (LoraOptions, {"dora": True}),
    "houlsby": (BottleneckOptions, {}),
    "pfeiffer": (BottleneckOptions, {"non_linearity": "relu", "targets": ("ffn.output",)}),
    "ia3": (IA3Options, {}),
    "bitfit": (BitFitOptions, {}),
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def options_of(method: str) -> Dict[str, Any]:
    """The options of `method` and their defaults (for CLI help)."""
    cls, defaults = _method(method)
    return {**{f.name: f.default for f in dataclasses.fields(cls)}, **defaults}


def _method(method: str) -> Tuple[type, Dict[str, Any]]:
    if method not in METHODS:
        raise ConfigError(f"unknown PEFT method {method!r}", fix=f"use one of {', '.join(METHODS)}")
    return METHODS[method]


def make_options(method: str, options: Dict[str, Any]) -> Any:
    cls, defaults = _method(method)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ConfigError(f"unknown {method} option(s) {', '.join(map(repr, unknown))}",
                          fix=f"valid: {', '.join(valid)}")
    merged = {**defaults, **options}
    for key in ("targets", "feedforward"):
        if merged.get(key) is not None:
            merged[key] = parse_targets(merged[key])
    return cls(**merged)


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


def _bias_names(model: nn.Module, targets: Optional[Sequence[str]]) -> List[str]:
    """Every encoder bias, or those of modules the target patterns pick."""
    biases = {n: p for n, p in model.named_parameters()
              if n.endswith("bias") and not n.startswith("head.") and ".core." not in n}
    if targets is None:
        return list(biases)
    owners = [n.rpartition(".")[0] for n in biases]
    unmatched = [t for t in targets if not any(matches(t, o) for o in owners)]
    if unmatched:
        raise ConfigError(f"bitfit: target {', '.join(map(repr, unmatched))} matches no module with a bias; "
                          f"available: {', '.join(short_names(owners))}")
    return [n for n, o in zip(biases, owners) if any(matches(t, o) for t in targets)]


# ----------------------------------------------------------------------------- public API
def add_adapter(model: nn.Module, name: str, method: str, *, train_head: bool = True, **options: Any) -> nn.Module:
    """Add adapter `name` of `method` to `model` (inactive and frozen until `set_adapter`)."""
    existing = adapters_of(model)
    opts = make_options(method, options)
    if name in existing:
        raise ConfigError(f"the model already has an adapter named {name!r}", fix="pick another name")
    if any(layer.merged is not None for layer in peft_layers(model).values()):
        raise ConfigError("cannot add an adapter while one is merged", fix="call nanoft.peft.unmerge(model) first")
    if existing and (method == "bitfit" or any(c.method == "bitfit" for c in existing.values())):
        raise ConfigError("bitfit trains the base model's own biases, so it cannot share a model with other "
                          "adapters", fix="use bitfit alone, or start from a fresh base model")

    if method == "bitfit":
        modules = _bias_names(model, opts.targets)
    else:
        kinds = (nn.Linear, nn.Embedding) if isinstance(opts, LoraOptions) else (nn.Linear,)
        modules = select(model, opts.targets, method, kinds)
        if not isinstance(opts, LoraOptions):
            embeddings = [m for m in modules if isinstance(model.get_submodule(m), nn.Embedding)]
            _require(not embeddings, f"{method} applies to linear layers only, not {', '.join(embeddings)}")
        for module_name in modules:
            layer = _wrap(model, module_name)
            layer.add(name, _make_adapter(method, opts, module_name, layer.base))

    if existing:
        _add_head(model, name, train_head)
    config = AdapterConfig(method, _jsonable(dataclasses.asdict(opts)), modules, train_head)
    model.peft_adapters = {**existing, name: config}
    return model


def _make_adapter(method: str, opts: Any, module_name: str, base: nn.Module) -> nn.Module:
    if isinstance(opts, LoraOptions):
        return LoraAdapter(base, opts.r, opts.alpha, opts.dropout, opts.rslora, opts.dora, opts.init)
    if isinstance(opts, IA3Options):
        return IA3Adapter(base, scale_input=any(matches(p, module_name) for p in opts.feedforward or ()))
    return BottleneckAdapter(base, opts.reduction_factor, opts.non_linearity)


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

    Methods: lora, rslora, dora (r, alpha, dropout, targets, init), houlsby, pfeiffer
    (reduction_factor, non_linearity, targets), ia3 (targets, feedforward), bitfit (targets).
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
    if config.method == "bitfit":
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


def mark_trainable(model: nn.Module) -> None:
    """requires_grad on the active adapter's tensors (and its head) only; everything else frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model).values():
        p.requires_grad_(True)


def trainable_summary(model: nn.Module) -> Dict[str, Any]:
    """{trainable, total, percent}: parameter counts (each shared tensor once)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights (LoRA, rsLoRA, DoRA, IA³); idempotent."""
    layers = peft_layers(model).values()
    for layer in layers:  # check all first: never leave a model half merged
        if layer.active is not None and layer.merged is None and not layer.adapters[layer.active].mergeable:
            method = adapters_of(model)[layer.active].method
            raise ConfigError(f"{method} adapters are non-linear and cannot be merged",
                              fix="keep the adapter, or train lora/rslora/dora/ia3 for a mergeable model")
    for layer in layers:
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
    """Whether the active adapter folds into the weights (lora, rslora, dora, ia3, bitfit)."""
    active = active_adapter(model)
    return active is None or adapters_of(model)[active].method not in ("houlsby", "pfeiffer")


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
           "trainable_summary", "adapter_parameters", "adapters_of", "active_adapter", "mark_trainable",
           "options_of", "METHODS", "AdapterConfig", "LoraOptions", "IA3Options", "BottleneckOptions",
           "BitFitOptions"]
