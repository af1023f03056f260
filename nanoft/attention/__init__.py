"""Attention kinds with one signature, `forward(q, k, v, key_padding_mask=None) -> out`.

q, k, v are `(batch, heads, seq, head_dim)`; `key_padding_mask` is bool `(batch, seq)`, True at
padding. Choose a kind by name with `build(kind, num_heads=..., head_dim=..., max_length=...,
**options)`, list them with `available()` and their options with `options_of(kind)`.
"""
from nanoft.attention.bigbird import BigBirdAttention, BigBirdOptions
from nanoft.attention.full import FullAttention, FullOptions
from nanoft.attention.linformer import LinformerAttention, LinformerOptions
from nanoft.attention.longformer import LongformerAttention, LongformerOptions
from nanoft.attention.performer import PerformerAttention, PerformerOptions
from nanoft.attention.registry import available, build, options_of

Full = FullAttention
Linformer = LinformerAttention
Performer = PerformerAttention
Longformer = LongformerAttention
BigBird = BigBirdAttention

__all__ = [
    "build", "available", "options_of",
    "FullAttention", "LinformerAttention", "PerformerAttention", "LongformerAttention", "BigBirdAttention",
    "Full", "Linformer", "Performer", "Longformer", "BigBird",
    "FullOptions", "LinformerOptions", "PerformerOptions", "LongformerOptions", "BigBirdOptions",
]
