"""Attention kinds with one signature, `forward(q, k, v, key_padding_mask=None) -> out`.

q, k, v are `(batch, heads, seq, head_dim)`; `key_padding_mask` is bool `(batch, seq)`, True at
padding. Choose a kind by name with `build(kind, num_heads=..., head_dim=..., max_length=...,
**options)`, list them with `names()` (`choices()` adds a line each) and their options with
`options_of(kind)` / `option_help(kind)`. A new kind subclasses `AttentionCore` and is added with
`register("name", Class)` (see `nanoft.attention.base`).
"""
from nanoft.attention.base import AttentionCore, NoOptions, SparseAttentionCore
from nanoft.attention.bigbird import BigBirdAttention, BigBirdOptions
from nanoft.attention.full import FullAttention, FullOptions
from nanoft.attention.linformer import LinformerAttention, LinformerOptions
from nanoft.attention.longformer import LongformerAttention, LongformerOptions
from nanoft.attention.performer import PerformerAttention, PerformerOptions
from nanoft.attention.registry import (available, build, choices, names, option_help, options_of, register,
                                       unregister)

Full = FullAttention
Linformer = LinformerAttention
Performer = PerformerAttention
Longformer = LongformerAttention
BigBird = BigBirdAttention

__all__ = [
    "build", "names", "choices", "available", "options_of", "option_help", "register", "unregister",
    "AttentionCore", "SparseAttentionCore", "NoOptions",
    "FullAttention", "LinformerAttention", "PerformerAttention", "LongformerAttention", "BigBirdAttention",
    "Full", "Linformer", "Performer", "Longformer", "BigBird",
    "FullOptions", "LinformerOptions", "PerformerOptions", "LongformerOptions", "BigBirdOptions",
]
