"""Adapter-only files: `adapter.safetensors` (the trained tensors and the head) + `adapter_config.json`.

The config records the method and its options, so loading re-applies the same method to a
base model and then fills in the tensors; and a fingerprint of the base (family and sizes) and
of the head, so an adapter loaded onto the wrong base fails with a message that says which
number differs instead of a shape error deep in torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from nanoft.errors import CheckpointError
from nanoft.peft.inject import (active_adapter, adapter_state, adapters_of, add_adapter, delete_adapter, head_module,
                                set_adapter)
from nanoft.weights.safetensors_io import SafetensorsFile, atomic_write_json, save_file

WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "nanoft-adapter"
VERSION = 1
FINGERPRINT = ("family", "hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size")


def base_fingerprint(model: nn.Module) -> Dict[str, Any]:
    """The base model's family and sizes: what an adapter's tensor shapes depend on."""
    config = model.config
    return {key: getattr(config, key) for key in FINGERPRINT}


def _head_info(model: nn.Module) -> Dict[str, Any]:
    return {"kind": getattr(model, "head_kind", None), "num_labels": getattr(model, "num_labels", None)}


def save_adapter(model: nn.Module, directory: Union[str, Path], name: Optional[str] = None) -> Path:
    """Write adapter `name` (default: the active one) to `directory`; returns the directory.

    Only the adapter's own tensors (and the head, when it was trained) are written: a LoRA r=8
    adapter on MiniLM is under 1 MB against the model's 90 MB.
    """
    directory = Path(directory)
    name = name or active_adapter(model)
    tensors = adapter_state(model, name)  # raises for an unknown name
    config = adapters_of(model)[name]
    save_file({k: p.detach() for k, p in tensors.items()}, directory / WEIGHTS_NAME,
              metadata={"format": "pt", "nanoft_adapter": name, "method": config.method})
    atomic_write_json(directory / CONFIG_NAME, {
        "format": FORMAT, "version": VERSION, "name": name, **config.to_json(),
        "base": base_fingerprint(model), "head": _head_info(model),
        "tensors": {k: list(p.shape) for k, p in sorted(tensors.items())},
    })
    return directory


def adapter_nbytes(model: nn.Module, name: Optional[str] = None) -> int:
    """Bytes of tensor data `save_adapter` writes for adapter `name` (the file adds a small header)."""
    return sum(p.numel() * p.element_size() for p in adapter_state(model, name).values())


def read_adapter_config(directory: Union[str, Path]) -> Dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} found", path=str(Path(directory)),
                              fix="pass a directory written by nanoft.peft.save_adapter")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{CONFIG_NAME} is not valid JSON ({e.__class__.__name__})", path=str(path),
                              line=getattr(e, "lineno", None), fix="re-save the adapter") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"not a nanoft adapter config (format is not {FORMAT!r})", path=str(path))
    if config.get("version") != VERSION:
        raise CheckpointError(f"adapter format version {config.get('version')!r} is not supported (expected {VERSION})",
                              path=str(path), fix="re-save the adapter with this nanoft version")
    return config


def _check_base(model: nn.Module, config: Dict[str, Any], path: Path) -> None:
    saved, ours = config.get("base", {}), base_fingerprint(model)
    diffs = [f"{k} {saved.get(k)!r} ≠ {ours[k]!r}" for k in FINGERPRINT if saved.get(k) != ours[k]]
    if diffs:
        raise CheckpointError(f"adapter was trained on a different base model (adapter vs this model: "
                              f"{', '.join(diffs)})", path=str(path),
                              fix="load it onto the base checkpoint it was trained from")
    head = config.get("head", {})
    if config.get("train_head") and head.get("kind") != getattr(model, "head_kind", None):
        raise CheckpointError(f"adapter was trained with a {head.get('kind')!r} head, this model has a "
                              f"{getattr(model, 'head_kind', None)!r} head", path=str(path),
                              fix=f"load the base model with head={head.get('kind')!r}")


def load_adapter(model: nn.Module, directory: Union[str, Path], name: Optional[str] = None) -> nn.Module:
    """Apply the saved method to `model` (a base model, or one with other adapters), load the tensors
    and make it the active adapter, named `name` (default: the name it was saved under)."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    weights_path = directory / WEIGHTS_NAME
    _check_base(model, config, directory / CONFIG_NAME)
    st = SafetensorsFile(weights_path)
    name = name or config.get("name") or "default"

    # The head exists before the adapter does: check it first, so a wrong num_labels changes nothing.
    head = head_module(model)
    head_params = dict(head.named_parameters()) if head is not None else {}
    problems = _shape_problems({k: v for k, v in _file_shapes(st).items() if k.startswith("head.")},
                               {f"head.{n}": tuple(p.shape) for n, p in head_params.items()})
    if problems:
        raise CheckpointError(f"adapter does not fit this model: {'; '.join(problems)}", path=str(weights_path),
                              fix=f"load the base model with num_labels={config.get('head', {}).get('num_labels')}")

    add_adapter(model, name, config["method"], train_head=bool(config.get("train_head", True)),
                **config.get("options", {}))
    params = adapter_state(model, name)
    problems = []
    if adapters_of(model)[name].modules != config.get("modules"):
        problems.append("its targets pick different layers on this model")
    file_shapes = _file_shapes(st)
    missing = sorted(set(params) - set(file_shapes))
    unexpected = sorted(set(file_shapes) - set(params))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
    problems += _shape_problems(file_shapes, {k: tuple(p.shape) for k, p in params.items()})
    if problems:
        delete_adapter(model, name)  # leave the model as it was
        raise CheckpointError(f"adapter does not fit this model: {'; '.join(problems)}", path=str(weights_path),
                              fix="load it onto the base checkpoint it was trained from")
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(st.tensor(key).to(dtype=p.dtype, device=p.device))
    return set_adapter(model, name)


def _file_shapes(st: SafetensorsFile) -> Dict[str, tuple]:
    return {k: st.shape(k) for k in st.keys()}


def _shape_problems(saved: Dict[str, tuple], ours: Dict[str, tuple]) -> List[str]:
    return [f"{k} has shape {tuple(saved[k])} in the adapter file, the model expects {tuple(ours[k])}"
            for k in sorted(saved) if k in ours and tuple(saved[k]) != tuple(ours[k])]


__all__ = ["save_adapter", "load_adapter", "adapter_nbytes", "read_adapter_config", "base_fingerprint",
           "WEIGHTS_NAME", "CONFIG_NAME"]
