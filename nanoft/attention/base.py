"""What every attention kind shares: the `AttentionCore` base class and a few numerical pieces.

All kinds take q, k, v as `(batch, heads, seq, head_dim)` and an optional bool
`key_padding_mask` `(batch, seq)` that is True where a key is padding.

A new kind is one class and one call (see `nanoft.attention.register`):

    @dataclass
    class ToyOptions:
        temperature: float = field(default=1.0, metadata={"help": "divides the scores"})

    class ToyAttention(AttentionCore):
        Options = ToyOptions

        def forward(self, q, k, v, key_padding_mask=None):
            self.check_inputs(q, k, v, key_padding_mask)
            ...

    nanoft.attention.register("toy", ToyAttention)
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nanoft import kernels
from nanoft.errors import ConfigError


@dataclass
class NoOptions:
    """A kind without options of its own."""


def unknown_name(what: str, name: str, valid: List[str]) -> ConfigError:
    """One-line error: the bad name, the nearest valid one and all valid ones."""
    near = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return ConfigError(f"unknown {what} {name!r}", fix=f"{hint}valid: {', '.join(valid) or '(none)'}")


def option_default(f: dataclasses.Field) -> Any:
    """The default of an options field (fields with a default_factory get a fresh value)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def require(condition: bool, kind: str, message: str, fix: str) -> None:
    """Raise a ConfigError for a bad option value of `kind`."""
    if not condition:
        raise ConfigError(f"{kind} attention: {message}", fix=fix)


class AttentionCore(nn.Module):
    """Base of every attention kind: the sizes, dropout rate, softmax scale and options it was built with.

    A kind sets `Options` to its options dataclass (each default written once, in its field, with a
    `metadata={"help": ...}` string) and writes `forward(q, k, v, key_padding_mask=None)`, starting with
    `self.check_inputs(...)`. Options are given as an object, as keywords, or both (keywords win):

        PerformerAttention(12, 64, 512, options=PerformerOptions(num_features=128))
        PerformerAttention(12, 64, 512, num_features=128)
    """

    Options: ClassVar[type] = NoOptions
    kind: ClassVar[str] = ""  # the registry name, set by `register`; used in error messages
    # True for kinds with a `varlen(q, k, v, cu_seqlens, max_seqlen)` over packed (total_tokens, heads, head_dim)
    # tokens: the unpadded encoder uses them; every other kind keeps the padded path.
    supports_varlen: ClassVar[bool] = False

    def __init__(self, num_heads: int, head_dim: int, max_length: int, dropout: float = 0.0,
                 scale: Optional[float] = None, options: Optional[Any] = None, **overrides: Any) -> None:
        super().__init__()
        name = self.label()
        require(0.0 <= dropout < 1.0, name, f"dropout must be in [0, 1), got {dropout}", "pass e.g. dropout=0.1")
        require(scale is None or scale > 0, name, f"scale must be positive, got {scale}",
                "pass None for 1/sqrt(head_dim)")
        self.num_heads, self.head_dim, self.max_length = num_heads, head_dim, max_length
        self.dropout = dropout
        self.scale = kernels.default_scale(head_dim, scale)
        self.options = self.make_options(options, overrides)

    @classmethod
    def label(cls) -> str:
        """The kind's name in messages: its registry name, else its class name."""
        return cls.kind or cls.__name__

    @classmethod
    def make_options(cls, options: Optional[Any] = None, overrides: Optional[Dict[str, Any]] = None) -> Any:
        """`options` (default: the dataclass defaults) with `overrides` applied; an unknown key is a ConfigError
        naming the nearest valid one."""
        valid = [f.name for f in dataclasses.fields(cls.Options)]
        for key in overrides or {}:
            if key not in valid:
                raise unknown_name(f"{cls.label()} attention option", key, valid)
        if options is None:
            return cls.Options(**(overrides or {}))
        if not isinstance(options, cls.Options):
            raise ConfigError(f"{cls.label()} attention takes {cls.Options.__name__}, "
                              f"got {type(options).__name__}", fix=f"pass options={cls.Options.__name__}(...)")
        return dataclasses.replace(options, **(overrides or {}))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give each kind a constructor signature that lists its options with their dataclass defaults,
        for help() and editors; the defaults themselves stay written once, in `Options`."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:  # a kind without state of its own still gets its own signature
            def init(self, *args: Any, **kw: Any) -> None:
                super(cls, self).__init__(*args, **kw)
            cls.__init__ = init  # type: ignore[misc]
        shared = [p.replace(annotation=f"Optional[{cls.Options.__name__}]") if p.name == "options" else p
                  for p in inspect.signature(AttentionCore.__init__).parameters.values()
                  if p.kind is not inspect.Parameter.VAR_KEYWORD]
        options = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option_default(f),
                                     annotation=f.type) for f in dataclasses.fields(cls.Options)]
        init.__signature__ = inspect.Signature(shared + options)

    def check_inputs(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor]) -> None:
        """Fail early with shapes in the message, instead of deep inside a matmul: once per call (the kernels
        are then called with validate=False)."""
        kernels.check_inputs(q, k, v, key_padding_mask)  # tensors, dtypes, devices, layout, mask
        if q.shape[1] != self.num_heads or k.shape != v.shape:
            raise ConfigError(f"attention built for {self.num_heads} heads got q {tuple(q.shape)}, "
                              f"k {tuple(k.shape)}, v {tuple(v.shape)}",
                              fix=f"pass q, k, v as (batch, {self.num_heads}, seq, head_dim) with k and v alike")

    def check_length(self, seq: int) -> None:
        """For kinds with per-position parameters or layouts: they cannot go past the length they were built for."""
        if seq > self.max_length:
            raise ConfigError(f"{self.label()} attention was built for max_length={self.max_length} but got a "
                              f"sequence of {seq} tokens", fix=f"build it with max_length >= {seq} or truncate inputs")

    def reset_parameters(self) -> None:
        """(Re)initialise the kind's own parameters and buffers; nothing for kinds without any."""

    def extra_repr(self) -> str:
        options = ", ".join(f"{f.name}={getattr(self.options, f.name)!r}" for f in dataclasses.fields(self.options))
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, max_length={self.max_length}, "
                f"dropout={self.dropout}" + (f", {options}" if options else ""))


class SparseAttentionCore(AttentionCore):
    """A kind that scores only some (query, key) pairs, and scores an input so short that its n x n scores
    are no larger than what the sparse form gathers densely, under the same mask: the same attention,
    with less copying and fewer FLOPs."""

    always_sparse = False  # True on an instance: never the dense form (tests, memory studies)

    def prefers_dense(self, dense_scores: int, sparse_scores: int) -> bool:
        """Whether to take the dense form, given how many scores each form computes."""
        return not self.always_sparse and dense_scores <= sparse_scores

    def _dense(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor, pattern: Tensor) -> Tensor:
        """The kind's attention as one masked n x n softmax, for (already scaled) q: query i sees key j where
        `pattern` (n, n) or (heads, n, n) allows it and key j is real (`valid`, (batch, n))."""
        allowed = pattern & valid[:, None, None, :]  # (batch, heads or 1, n, n)
        return dense_masked_attention(q, k, v, allowed, self.dropout, self.training)


def key_is_valid(key_padding_mask: Optional[Tensor], batch: int, seq: int, device: torch.device) -> Tensor:
    """(batch, seq) bool, True where a key may be attended to."""
    if key_padding_mask is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    return ~key_padding_mask


def upcast(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 for numerically sensitive steps; fp32 and fp64 are kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def masked_softmax(scores: Tensor, allowed: Optional[Tensor]) -> Tensor:
    """Softmax over the last dim (fp32 for half inputs) over `allowed` entries only (None: all).

    `scores` must be a fresh tensor that nothing else reads (the output of `(q @ k^T) * scale`):
    masking is done in place, so the only n-sized tensors kept are the scores and the weights.
    Blocked entries get the lowest finite value rather than -inf, so a row with nothing allowed
    (only a padded query can have one) gets finite weights instead of NaN gradients.
    """
    scores = upcast(scores)
    if allowed is not None:
        scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def attention_dropout(probs: Tensor, p: float, training: bool) -> Tensor:
    """Dropout on attention probabilities, active only while training."""
    return F.dropout(probs, p=p, training=True) if training and p > 0.0 else probs


def softmax_attention(scores: Tensor, allowed: Optional[Tensor], v: Tensor, dropout: float,
                      training: bool) -> Tensor:
    """softmax(scores) over `allowed` entries, dropout, times v: the end of every softmax kind.

    `scores` (..., queries, keys) must be fresh (see `masked_softmax`); v is (..., keys, head_dim).
    """
    probs = masked_softmax(scores, allowed)
    probs = attention_dropout(probs, dropout, training).to(v.dtype)
    return probs @ v


def dense_masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout: float,
                           training: bool) -> Tensor:
    """softmax(q k^T) v over `allowed` entries, for (already scaled) q of shape (batch, heads, n, dim)."""
    return softmax_attention(q @ k.transpose(-2, -1), allowed, v, dropout, training)  # scores (batch, heads, n, n)


def make_generator(seed: Optional[int], draw: int = 0) -> Optional[torch.Generator]:
    """A CPU generator for draw number `draw` of a seeded module, or None to use torch's global one.

    Seeding by (seed, draw) makes every redraw reproducible without keeping generator state.
    """
    if seed is None:
        return None
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + draw)
