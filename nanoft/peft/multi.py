"""Many adapters, one base: several saved adapters, each with its own head and labels, in one batch.

    from nanoft import load_model, peft
    base = load_model(head=None)  # MiniLM; the checkpoint the adapters were trained from
    model = peft.load_adapters(base, {"sst2": "runs/sst2/best/adapter", "news": "runs/agnews/best/adapter"})
    logits = model(ids, attention_mask=mask, adapter_names=["sst2", "news", "news"])  # (3, 4), -inf padded
    per_row = model.row_logits(logits, ["sst2", "news", "news"])                       # [(2,), (4,), (4,)]

Every example of a batch goes through its own adapter and its own head, in one forward pass. The encoder
runs once on the whole batch: attention, LayerNorms and every layer no adapter wraps are shared. Inside a
wrapped layer (`PeftLayer`) the rows (or, unpadded, the tokens) are grouped by adapter and each group goes
through its own adapter's `forward(x, base)`; rows of adapters that do not wrap that layer go through the
plain layer. The groups partition the batch, so the base projection is still computed once per row (split
into one matmul per group) and each adapter's extra work is done only on its own rows, as in Hugging Face
PEFT's mixed-batch inference. Because it calls each adapter's own forward, this is exact for every method
that wraps layers (LoRA, rsLoRA, DoRA, IA³, bottleneck adapters, ...), not only the additive ones.

Refused, each with a one-line error: methods that train the base's own tensors (BitFit) or rewrite them
(anything whose loading changes a base weight), since then the base is no longer shared; a merged adapter
(a merged layer's weight is no longer the base's, so it would leak into every other adapter's rows);
gradient checkpointing while training (its recomputation would run after the routing is gone).

Heads may differ in label count: the logits are `(batch, max labels)`, row i valid in its first
`num_labels(adapter_names[i])` columns and `-inf` beyond, so `softmax`, `argmax` and cross-entropy over a
row give that adapter's own answer unchanged. A regression head's value sits in column 0.

All parameters start frozen; `set_trainable(names)` unfreezes exactly those adapters and their heads,
so training one adapter (even on mixed batches) never changes another.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.errors import CheckpointError, ConfigError
from nanoft.peft import registry
from nanoft.peft.inject import (adapter_parameters, adapter_state, add_adapter, adapters_of, delete_adapter,
                                peft_layers)
from nanoft.peft.io import WEIGHTS_NAME, base_fingerprint, read_adapter_config
from nanoft.peft.layers import PeftLayer
from nanoft.weights.safetensors_io import SafetensorsFile

SEQUENCE_HEADS = ("classification", "regression")


class Route:
    """Which rows of dim 0 of a wrapped layer's input belong to which adapter, for one forward pass.

    dim 0 is the batch (padded inputs, `(batch, seq, ...)`) or the packed tokens (unpadded, `(tokens, ...)`);
    `size` is its length, checked on every call so a layer fed another layout fails loudly.
    """

    def __init__(self, groups: Dict[str, torch.Tensor], size: int) -> None:
        self.groups = groups  # {adapter: ascending row indices}, the groups partition 0..size-1
        self.size = size

    def __call__(self, layer: PeftLayer, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.size:
            raise RuntimeError(f"mixed-adapter routing expected {self.size} rows at dim 0, got {tuple(x.shape)}")
        own = {name: rows for name, rows in self.groups.items() if name in layer.adapters}
        if len(own) == 1 and len(self.groups) == 1:  # the whole batch uses one adapter: no gather
            (name,) = own
            return layer.adapters[name](x, layer.base)
        if not own:
            return layer.base(x)
        parts: List[Tuple[torch.Tensor, Optional[str]]] = [(rows, name) for name, rows in own.items()]
        rest = [rows for name, rows in self.groups.items() if name not in own]
        if rest:
            parts.append((torch.cat(rest), None))  # rows whose adapter leaves this layer alone
        outs = []
        for rows, name in parts:
            xs = x.index_select(0, rows)
            outs.append(layer.base(xs) if name is None else layer.adapters[name](xs, layer.base))
        order = torch.cat([rows for rows, _ in parts])
        return torch.cat(outs).index_select(0, torch.argsort(order))


class MultiAdapterModel(nn.Module):
    """A base encoder with several named adapters and one head per adapter; see the module docstring."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if getattr(base, "peft_adapters", None):
            raise ConfigError("the base model already has adapters", fix="start from a plain base model")
        fallback = getattr(base, "head", None)
        self.base = base
        base.head = None  # each adapter brings its own head
        self._fallback_head = [fallback]  # a list, so it is not registered as a submodule
        self._fallback_info = (getattr(base, "head_kind", None), getattr(base, "num_labels", None))
        self.heads = nn.ModuleDict()
        self.head_kinds: Dict[str, str] = {}
        self.label_names: Dict[str, Optional[List[str]]] = {}
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(base.training)  # the mode of the model it wraps (a loaded base is in eval mode)

    @property
    def config(self):
        return self.base.config

    @property
    def adapter_names(self) -> List[str]:
        return list(self.heads)

    def num_labels(self, name: str) -> int:
        """Columns of adapter `name`'s logits (1 for a regression head)."""
        self._known([name])
        return 1 if self.head_kinds[name] == "regression" else self.heads[name].out.out_features

    # ------------------------------------------------------------------ loading
    def load_adapter(self, name: str, directory: Union[str, Path],
                     label_names: Optional[Sequence[str]] = None) -> "MultiAdapterModel":
        """Add the adapter saved in `directory` (by `nanoft.peft.save_adapter`, e.g. RUN/best/adapter) as `name`,
        with its head. `label_names`: the labels of the data it will see; their count must be the head's."""
        directory = Path(directory)
        if name in self.heads:
            raise ConfigError(f"an adapter named {name!r} is already loaded", fix="give each adapter its own name")
        config = read_adapter_config(directory)
        where = str(directory / WEIGHTS_NAME)
        self._check_base(config, directory)
        method = config.get("method")
        if not registry.get(method).wraps_layers:
            raise ConfigError(f"adapter {name!r} ({method}) trains the base model's own tensors, so it cannot share "
                              "one base with other adapters", fix="load it alone with nanoft.peft.load_adapter")
        st = SafetensorsFile(directory / WEIGHTS_NAME)
        shapes = {k: tuple(st.shape(k)) for k in st.keys()}
        head = self._build_head(name, config, st, shapes, where)
        count = 1 if config["head"]["kind"] == "regression" else head.out.out_features
        if label_names is not None:
            check_label_count(name, count, list(label_names), where)

        before = self._snapshot(config.get("modules") or [])
        trainable = {id(p) for p in self.parameters() if p.requires_grad}
        add_adapter(self.base, name, method, train_head=False, **config.get("options", {}))
        try:
            params = adapter_state(self.base, name)  # its parameters and persistent buffers (VeRA's matrices)
            body = {k: v for k, v in shapes.items() if not k.startswith("head.")}
            problems = []
            if adapters_of(self.base)[name].modules != config.get("modules"):
                problems.append("its targets pick different layers on this model")
            for what, keys in (("missing", sorted(set(params) - set(body))),
                               ("unexpected", sorted(set(body) - set(params)))):
                if keys:
                    problems.append(f"{what} tensors: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}")
            problems += [f"{k} has shape {body[k]} in the adapter file, the model expects {tuple(p.shape)}"
                         for k, p in sorted(params.items()) if k in body and body[k] != tuple(p.shape)]
            if problems:
                raise CheckpointError(f"adapter {name!r} does not fit this model: {'; '.join(problems)}", path=where,
                                      fix="load it onto the base checkpoint it was trained from")
            changed = [m for m, tensors in before.items() if not all(
                torch.equal(t, now) for t, now in zip(tensors, self._tensors_of(m)))]
            if changed:
                raise ConfigError(f"adapter {name!r} ({method}) rewrites the base weights it adapts "
                                  f"({changed[0]}{' …' if len(changed) > 1 else ''}), so it cannot share one base "
                                  "with other adapters", fix="load it alone with nanoft.peft.load_adapter")
        except Exception:  # leave the model as it was
            self._restore(before)
            delete_adapter(self.base, name)
            for p in self.parameters():
                p.requires_grad_(id(p) in trainable)
            raise
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(st.tensor(key).to(dtype=p.dtype, device=p.device))
                p.requires_grad_(False)
        for layer in peft_layers(self.base).values():
            layer.set_active(None)  # a plain call of the base model stays the base model
        self.heads[name] = head
        self.head_kinds[name] = config["head"]["kind"]
        self.label_names[name] = list(label_names) if label_names is not None else None
        return self

    def _check_base(self, config: Dict, directory: Path) -> None:
        saved, ours = config.get("base", {}), base_fingerprint(self.base)
        diffs = [f"{k} {saved.get(k)!r} ≠ {v!r}" for k, v in ours.items() if saved.get(k) != v]
        if diffs:
            raise CheckpointError(f"adapter was trained on a different base model (adapter vs this model: "
                                  f"{', '.join(diffs)})", path=str(directory / "adapter_config.json"),
                                  fix="load it onto the base checkpoint it was trained from")

    def _build_head(self, name: str, config: Dict, st: SafetensorsFile, shapes: Dict[str, tuple],
                    where: str) -> nn.Module:
        """The adapter's own head, from its file; or, for an adapter saved without one, a copy of the base's."""
        from nanoft.models.heads import build_head

        info = config.get("head") or {}
        kind = info.get("kind")
        if kind not in SEQUENCE_HEADS:
            raise ConfigError(f"adapter {name!r} has a {kind!r} head; mixed batches route sequence heads only "
                              f"({', '.join(SEQUENCE_HEADS)})", fix="load it alone with nanoft.peft.load_adapter")
        keys = {k[len("head."):]: k for k in shapes if k.startswith("head.")}
        if not keys:
            fallback = self._fallback_head[0]
            if fallback is None or self._fallback_info != (kind, info.get("num_labels")):
                raise CheckpointError(f"adapter {name!r} was saved without its head (train_head=False) and the base "
                                      f"model has no {kind} head with {info.get('num_labels')} labels to share",
                                      path=where, fix=f"load the base with head={kind!r}, "
                                                      f"num_labels={info.get('num_labels')}")
            head = copy.deepcopy(fallback)
        else:
            out = shapes.get("head.out.weight")
            num_labels = out[0] if out is not None else int(info.get("num_labels") or 1)
            head = build_head(self.base.config, kind, num_labels)
            params = dict(head.named_parameters())
            if set(keys) != set(params) or any(shapes[keys[k]] != tuple(p.shape) for k, p in params.items()):
                raise CheckpointError(f"adapter {name!r}: its head tensors ({', '.join(sorted(keys))}) are not a "
                                      f"{kind} head of this base", path=where,
                                      fix="load it onto the base checkpoint it was trained from")
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(st.tensor(keys[k]).to(dtype=p.dtype))
        weight = self.base.encoder.embeddings.word.weight
        head = head.to(device=weight.device, dtype=weight.dtype)
        head.train(self.training)
        for p in head.parameters():
            p.requires_grad_(False)
        return head

    def _tensors_of(self, module_name: str) -> List[torch.Tensor]:
        module = self.base.get_submodule(module_name)
        module = module.base if isinstance(module, PeftLayer) else module
        return [p for p in module.parameters(recurse=False)]

    def _snapshot(self, modules: Iterable[str]) -> Dict[str, List[torch.Tensor]]:
        """Copies of the base tensors an adapter will wrap, to prove loading it left them alone."""
        out = {}
        for m in modules:
            try:
                out[m] = [t.detach().clone() for t in self._tensors_of(m)]
            except AttributeError:
                continue  # a module the base lacks: reported as a target mismatch
        return out

    def _restore(self, before: Dict[str, List[torch.Tensor]]) -> None:
        with torch.no_grad():
            for m, tensors in before.items():
                for t, now in zip(tensors, self._tensors_of(m)):
                    now.copy_(t)

    # ------------------------------------------------------------------ training state
    def set_trainable(self, names: Union[str, Sequence[str], None]) -> "MultiAdapterModel":
        """requires_grad on exactly the adapters `names` (and their heads); everything else frozen."""
        names = [names] if isinstance(names, str) else list(names or [])
        self._known(names)
        for p in self.parameters():
            p.requires_grad_(False)
        for name in names:
            for p in list(adapter_parameters(self.base, name).values()) + list(self.heads[name].parameters()):
                p.requires_grad_(True)
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None,
                adapter_names: Union[str, Sequence[str], None] = None) -> torch.Tensor:
        """Logits `(batch, max labels)`: row i from adapter `adapter_names[i]` and its head, `-inf` past its
        label count (a regression value in column 0). `adapter_names`: one name per row, or one for all."""
        batch = input_ids.shape[0]
        names = self._row_names(adapter_names, batch)
        merged = sorted({layer.merged for layer in peft_layers(self.base).values() if layer.merged is not None})
        if merged:
            raise ConfigError(f"adapter {merged[0]!r} is merged into the base weights, which every row of a mixed "
                              "batch shares", fix="call nanoft.peft.unmerge(model.base) first")
        if self.training and self.base.encoder.gradient_checkpointing:
            raise ConfigError("gradient checkpointing cannot train a mixed-adapter batch",
                              fix="turn gradient checkpointing off")
        device = input_ids.device
        order = list(dict.fromkeys(names))
        row_group = torch.tensor([order.index(n) for n in names], device=device)
        rows = {n: (row_group == g).nonzero().squeeze(1) for g, n in enumerate(order)}

        encoder = self.base.encoder
        packed = encoder.unpads(input_ids, attention_mask, every_position=False)
        if packed:  # tokens are packed row by row, so each token belongs to its row's adapter
            lengths = (attention_mask != 0).sum(dim=1)
            token_group = torch.repeat_interleave(row_group, lengths)
            route = Route({n: (token_group == g).nonzero().squeeze(1) for g, n in enumerate(order)},
                          int(lengths.sum()))
        else:
            route = Route(rows, batch)
        layers = list(peft_layers(self.base).values())
        for layer in layers:
            layer.route = route
        try:
            hidden, packing = encoder.encode(input_ids, attention_mask, token_type_ids, every_position=False)
        finally:
            for layer in layers:
                layer.route = None
        first = (hidden.index_select(0, packing.first_rows()) if packing is not None else hidden[:, 0])[:, None]

        width = max(self.num_labels(n) for n in order)
        outs = []
        for n in order:
            logits = self.heads[n](first.index_select(0, rows[n]))  # (rows, labels)
            outs.append(F.pad(logits, (0, width - logits.shape[1]), value=float("-inf")))
        return torch.cat(outs).index_select(0, torch.argsort(torch.cat([rows[n] for n in order])))

    def row_logits(self, logits: torch.Tensor, adapter_names: Union[str, Sequence[str]]) -> List[torch.Tensor]:
        """Each row's own logits, `-inf` padding dropped: `(num_labels,)` per row."""
        names = self._row_names(adapter_names, logits.shape[0])
        return [logits[i, :self.num_labels(n)] for i, n in enumerate(names)]

    def _row_names(self, adapter_names: Union[str, Sequence[str], None], batch: int) -> List[str]:
        if adapter_names is None:
            raise ConfigError("a multi-adapter model needs adapter_names (one per row, or one for all)",
                              fix=f"adapters: {', '.join(self.heads) or '(none loaded)'}")
        names = [adapter_names] * batch if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) != batch:
            raise ConfigError(f"adapter_names has {len(names)} names for a batch of {batch} rows",
                              fix="give one name per row")
        self._known(names)
        return names

    def _known(self, names: Iterable[str]) -> None:
        unknown = [n for n in dict.fromkeys(names) if n not in self.heads]
        if unknown:
            raise ConfigError(f"adapter {unknown[0]!r} is not loaded",
                              fix=f"loaded: {', '.join(self.heads) or '(none)'}")


def check_label_count(name: str, num_labels: int, label_names: List[str], where: Optional[str] = None) -> None:
    """An adapter's head must have one output per label of the data it is used on."""
    if len(label_names) != num_labels:
        shown = ", ".join(map(str, label_names[:6])) + (" …" if len(label_names) > 6 else "")
        raise ConfigError(f"adapter {name!r} has a {num_labels}-label head but its data has {len(label_names)} "
                          f"labels ({shown})", path=where,
                          fix="use the adapter trained on this data, or data with the labels it was trained on")


def load_adapters(base: nn.Module, adapters: Mapping[str, Union[str, Path]],
                  label_names: Optional[Mapping[str, Sequence[str]]] = None) -> MultiAdapterModel:
    """A `MultiAdapterModel` on `base` (used in place; its own head is set aside) with `{name: directory}`."""
    model = MultiAdapterModel(base)
    for name, directory in adapters.items():
        model.load_adapter(name, directory, (label_names or {}).get(name))
    return model


__all__ = ["MultiAdapterModel", "load_adapters", "check_label_count", "Route"]
