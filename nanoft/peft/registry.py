"""PEFT methods by name. Each method registers itself beside its own code:

    register("lora", LoraOptions, factory=lora_adapter, mergeable=True, layers=(nn.Linear, nn.Embedding), lr=1e-3)

- `options`: a dataclass whose fields are the method's options, each default written once, with
  `metadata={"help": ...}`. The same fields become `nanoft train` flags (`--lora-r`): the flag is
  `--<cli_prefix>-<field>` (the class may set `cli_prefix`, else the method name) unless the field's
  metadata names one (`"flag": "--rslora"`). Fields whose metadata has `"patterns": True` hold layer
  patterns and also accept "query,value".
- `factory(base, options, layer_name) -> adapter`: the adapter module for one picked layer, with
  `forward(x, base)` (and `merge(base)` / `unmerge(base)` when `mergeable`).
- `parameters(model, options) -> names`: instead of a factory, for methods that train some of the
  base model's own tensors (BitFit) rather than wrapping layers.
- `lr`: the method's recipe learning rate, what a run with `--peft NAME` and no `--lr` trains at
  (adapters train few, freshly initialised tensors and need a larger rate than full fine-tuning);
  `lr_source` says where the figure comes from (a sweep's results file, a paper). Without one, a run
  falls back to full fine-tuning's rate.
- `prepare(model, options, layer_names) -> layer_options`: optional, called once per adapter before
  any factory call, for state shared by all its layers (VeRA's random matrices, sized to the
  largest picked layer); what it returns is what the factory receives as options.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn

from nanoft.errors import ConfigError
from nanoft.peft.targets import parse_targets

Factory = Callable[[nn.Module, Any, str], nn.Module]
Parameters = Callable[[nn.Module, Any], List[str]]
Prepare = Callable[[nn.Module, Any, List[str]], Any]


@dataclass(frozen=True)
class Method:
    """A registered PEFT method (see the module docstring)."""

    name: str
    options: type
    factory: Optional[Factory]
    mergeable: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)  # this method's defaults over the class's
    layers: Tuple[type, ...] = (nn.Linear,)  # layer kinds its targets may pick
    parameters: Optional[Parameters] = None
    prepare: Optional[Prepare] = None  # shared state for all of one adapter's layers, before the factory calls
    lr: Optional[float] = None  # the recipe learning rate (see the module docstring)
    lr_source: str = ""  # where that rate comes from

    @property
    def wraps_layers(self) -> bool:
        return self.factory is not None


_METHODS: Dict[str, Method] = {}


def register(name: str, options: type, factory: Optional[Factory] = None, *, mergeable: bool,
             defaults: Optional[Mapping[str, Any]] = None, layers: Tuple[type, ...] = (nn.Linear,),
             parameters: Optional[Parameters] = None, prepare: Optional[Prepare] = None,
             lr: Optional[float] = None, lr_source: str = "") -> Method:
    """Add method `name`; give exactly one of `factory` (wrap layers) and `parameters` (train base tensors)."""
    if name in _METHODS:
        raise ValueError(f"PEFT method {name!r} is already registered")
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of PEFT method {name!r} must be a dataclass, got {options!r}")
    if (factory is None) == (parameters is None):
        raise TypeError(f"PEFT method {name!r}: pass exactly one of factory= and parameters=")
    if prepare is not None and factory is None:
        raise TypeError(f"PEFT method {name!r}: prepare= goes with factory=")
    valid = {f.name for f in dataclasses.fields(options)}
    unknown = set(defaults or {}) - valid
    if unknown:
        raise TypeError(f"PEFT method {name!r}: defaults for unknown options {sorted(unknown)}")
    if lr is not None and not lr > 0:
        raise TypeError(f"PEFT method {name!r}: lr must be > 0, got {lr!r}")
    method = Method(name, options, factory, mergeable, dict(defaults or {}), tuple(layers), parameters, prepare,
                    lr, lr_source)
    _METHODS[name] = method
    return method


def unregister(name: str) -> None:
    """Remove method `name` (a test's or plugin's own method)."""
    get(name)
    del _METHODS[name]


def names() -> List[str]:
    """Names of all registered methods, in registration order."""
    return list(_METHODS)


def get(name: str) -> Method:
    if name not in _METHODS:
        near = difflib.get_close_matches(name, names(), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown PEFT method {name!r}", fix=f"{hint}use one of {', '.join(names())}")
    return _METHODS[name]


def check(ok: bool, message: str) -> None:
    """An options class's own validation: a ConfigError when `ok` is false."""
    if not ok:
        raise ConfigError(message)


def options_of(name: str) -> Dict[str, Any]:
    """The options of method `name` and their defaults."""
    method = get(name)
    return {**{f.name: f.default for f in dataclasses.fields(method.options)}, **method.defaults}


def make_options(name: str, options: Mapping[str, Any]) -> Any:
    """The options object of method `name`: its defaults overlaid with `options` (unknown keys: an error)."""
    method = get(name)
    fields = {f.name: f for f in dataclasses.fields(method.options)}
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise ConfigError(f"unknown {name} option(s) {', '.join(map(repr, unknown))}",
                          fix=f"valid: {', '.join(fields)}")
    merged = {**method.defaults, **options}
    for key, value in merged.items():
        if fields[key].metadata.get("patterns") and value is not None:
            merged[key] = parse_targets(value)
    return method.options(**merged)


def flag_of(options: type, f: dataclasses.Field, method: str) -> str:
    """The `nanoft train` flag of option field `f` of an options class."""
    prefix = getattr(options, "cli_prefix", method)
    return f.metadata.get("flag") or f"--{prefix}-{f.name}".replace("_", "-")


__all__ = ["Method", "register", "unregister", "names", "get", "check", "options_of", "make_options", "flag_of"]
