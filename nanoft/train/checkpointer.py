"""Saving and restoring a run's checkpoint, and exporting loadable models — crash-safe, pickle-free.

A checkpoint is a folder: the model in Hugging Face layout (or, under PEFT, only the trainable
tensors), the tokenizer, and the trainer state as `trainer_state.safetensors` (every tensor:
optimizer moments, RNG states, SWA averages) plus `trainer_state.json` (everything else, and the
size of every file in the folder). It is written whole into `checkpoint.tmp/`, each file fsynced, the
state file last, and only then swapped in by two renames; `RunDir.find_checkpoint` recovers from a
crash between them. A disk that fills up mid-save costs the new checkpoint, never the old one.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn

from nanoft.errors import CheckpointError
from nanoft.io import atomic_replace_dir, atomic_write_json, writing
from nanoft.train import statefile
from nanoft.train.rundir import CHECKPOINT, STATE_JSON, STATE_TENSORS, RunDir
from nanoft.weights import save_model
from nanoft.weights.checkpoint import read_hf_tensors
from nanoft.weights.safetensors_io import SafetensorsFile, save_file

FORMAT = 1
TRAINABLE = "trainable.safetensors"


def has_peft(model: nn.Module) -> bool:
    """True when PEFT wrapped layers of the model (BitFit wraps none: its checkpoints are plain)."""
    return any(getattr(m, "is_peft_layer", False) for m in model.modules())


@contextlib.contextmanager
def _staging(directory: Path) -> Iterator[Path]:
    """A fresh `<directory>.tmp/` to write into; removed again if writing fails with an error (a full disk).

    A crash (SIGKILL, power loss) leaves it behind; the next save clears it and resume ignores it."""
    tmp = directory.with_name(directory.name + ".tmp")
    with writing(directory):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class Checkpointer:
    """Writes and reads `RUN/checkpoint/` and exports `RUN/best/`-style model folders."""

    def __init__(self, run_dir: RunDir, tokenizer: Any, label_names: Optional[List[str]] = None) -> None:
        self.run_dir = run_dir
        self.tokenizer = tokenizer
        self.label_names = label_names

    # ------------------------------------------------------------------ export
    def export(self, model: nn.Module, directory: Path,
               files: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> None:
        """A loadable model: HF layout (plain), or the adapter file plus a merged HF-layout copy (PEFT); `files`
        ({name: tensors}, e.g. the sparsity masks) are saved beside it in the same atomic replace."""
        with _staging(directory) as tmp:
            for name, tensors in (files or {}).items():
                save_file(tensors, tmp / name)
            if has_peft(model):
                from nanoft import peft

                peft.save_adapter(model, tmp / "adapter")
                if peft.is_mergeable(model):  # bottleneck adapters cannot be folded into the weights
                    save_model(peft.merged_copy(model), tmp, label_names=self.label_names)
            else:
                save_model(model, tmp, label_names=self.label_names)
            self.tokenizer.save(tmp)
            atomic_replace_dir(tmp, directory)

    # ------------------------------------------------------------------ save
    def save(self, model: nn.Module, state: Dict[str, Any]) -> None:
        """Model + tokenizer + trainer state (a tree of numbers, strings and tensors), atomically."""
        final = self.run_dir.checkpoint
        with _staging(final) as tmp:
            if has_peft(model):  # trained tensors, and adapters' frozen ones (PiSSA's start, VeRA's random pair)
                trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
                trained.update((n, b) for n, b in model.named_buffers() if ".adapters." in n)
                save_file(trained, tmp / TRAINABLE)
            else:
                save_model(model, tmp, label_names=self.label_names)
            self.tokenizer.save(tmp)
            tensors: Dict[str, torch.Tensor] = {}
            tree = statefile.encode(state, tensors)
            save_file(tensors, tmp / STATE_TENSORS)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            atomic_write_json(tmp / STATE_JSON, {"format": FORMAT, "files": files, "state": tree})
            atomic_replace_dir(tmp, final)

    # ------------------------------------------------------------------ load
    def load(self, model: nn.Module) -> Dict[str, Any]:
        """Load the model tensors in place and return the trainer state tree (validated by the caller)."""
        directory = self.run_dir.find_checkpoint()
        if directory is None:
            raise CheckpointError("no complete checkpoint to resume from", path=str(self.run_dir / CHECKPOINT),
                                  fix="start the run again with --overwrite")
        where = str(directory / STATE_JSON)
        try:
            document = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError("trainer state is not valid JSON (corrupt checkpoint)", path=where) from None
        if statefile.expect(document, "format", int, where) != FORMAT:
            raise CheckpointError(f"trainer state format {document['format']} is not {FORMAT}", path=where,
                                  fix="resume with the nanoft version that wrote it, or start anew")
        st = SafetensorsFile(directory / STATE_TENSORS)
        tensors = {k: st.tensor(k).clone() for k in st.keys()}
        state = statefile.decode(statefile.expect(document, "state", dict, where), tensors, where)
        self._load_model_tensors(model, directory)
        return state

    @staticmethod
    def _load_model_tensors(model: nn.Module, directory: Path) -> None:
        if has_peft(model):
            st = SafetensorsFile(directory / TRAINABLE)
            tensors = {k: st.tensor(k).clone() for k in st.keys()}
        else:
            tensors = read_hf_tensors(model, directory / "model.safetensors")
        own = model.state_dict()
        unknown = [k for k in tensors if k not in own]
        if unknown:
            raise CheckpointError(f"checkpoint does not fit the model: {unknown[:3]}", path=str(directory))
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in tensors.items() if v.shape != own[k].shape]
        if wrong:
            raise CheckpointError(f"checkpoint tensor shapes do not fit the model: {wrong[:3]}", path=str(directory))
        model.load_state_dict(tensors, strict=False)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """Load an optimizer state tree after checking it fits the optimizer's parameters (torch does not)."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise CheckpointError("optimizer state is malformed", path=where, fix="the checkpoint is corrupt; start anew")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups) or \
            sum(len(g.get("params", [])) for g in saved_groups if isinstance(g, dict)) != len(params):
        raise CheckpointError("optimizer state has other parameter groups than this run's model", path=where,
                              fix="resume with the run's own model, PEFT and learning-rate settings")
    for index, slots in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(slots, dict):
            raise CheckpointError(f"optimizer state has a bad entry {index!r}", path=where)
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(f"optimizer state {slot!r} of parameter {index} has shape {tuple(value.shape)}, "
                                      f"the model's is {tuple(params[index].shape)}", path=where,
                                      fix="resume with the run's own model")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"optimizer state does not load: {e}", path=where) from None
    # Saved tensors come back contiguous; a parameter that is not (e.g. a transposed SVD factor) must get its
    # moments in its own memory layout: the fused AdamW step pairs elements by storage offset, not by index.
    for param in params:
        slots = optimizer.state.get(param, {})
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                slots[slot] = torch.empty_like(param, dtype=value.dtype).copy_(value)


__all__ = ["Checkpointer", "has_peft", "load_optimizer_state"]
