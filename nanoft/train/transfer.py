"""Attention transfer: teach a converted attention kind to reproduce the checkpoint's own attention.

Converting a pretrained encoder to Linformer keeps Q/K/V/O but replaces the softmax over all n keys by a
softmax over k pooled keys, and every layer's output moves (bench/results/convert_imdb.md: MiniLM on IMDB
texts, last-layer relative error 0.87 at k = 256), so a short fine-tune starts far from the pretrained
function. Kasai et al. 2021 (T2R) and LoLCATs (Zhang et al. 2024) close such a gap before fine-tuning by
training only the new attention's own parameters to match the original attention's outputs:

- every layer sees the original model's inputs (teacher forcing: the forward pass runs on exact softmax
  attention, so layer l gets what the pretrained model gives it, whatever the earlier approximations do);
- loss = sum over layers of ||approx - exact||² / ||exact||² over the real (non-padding) query positions;
- only the kind's parameters train (Linformer's projections E and F); Q/K/V/O, FFN, embeddings and the
  head are untouched, and the model is in eval mode (no dropout) throughout.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nanoft.errors import ConfigError


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
                    scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the real keys; q, k, v (batch, heads, seq, head_dim)."""
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (batch, 1, 1, seq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class _TeacherForced(nn.Module):
    """Wraps a layer's attention core: returns exact attention, records the core's relative error against it."""

    supports_varlen = False  # the encoder keeps the padded path: the wrapped kinds take key_padding_mask

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core
        self.errors: List[torch.Tensor] = []

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        exact = exact_attention(q, k, v, key_padding_mask, self.core.scale)
        real = (torch.ones(q.shape[0], q.shape[2], device=q.device) if key_padding_mask is None
                else (~key_padding_mask).to(q.dtype))[:, None, :, None]  # (batch, 1, seq, 1): real queries
        with torch.enable_grad():  # the caller runs the frozen model without autograd; the core learns
            approx = self.core(q, k, v, key_padding_mask=key_padding_mask)
            error = (((approx - exact) ** 2) * real).sum() / ((exact ** 2) * real).sum().clamp(min=1e-12)
        self.errors.append(error)
        return exact


def transfer_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The attention kind's own parameters (e.g. Linformer's E and F) in every encoder layer."""
    return [p for layer in model.encoder.layers for p in layer.attention.core.parameters()]


def attention_transfer(model: nn.Module, batches: Iterable[Dict[str, torch.Tensor]], steps: int, lr: float,
                       forward=None, probe: Sequence[Dict[str, torch.Tensor]] = ()) -> Dict[str, float]:
    """Train the attention kind's own parameters for `steps` batches (Adam, `lr`) to reproduce exact attention,
    layer by layer, under teacher forcing. `batches` yields collated batches on the model's device;
    `forward(batch)` runs the model on one (default: input_ids and attention_mask). Returns the mean per-layer
    relative error over the `probe` batches before and after (the same batches, not trained on by this call
    unless `batches` holds them), and over the first and the last training batch."""
    params = transfer_parameters(model)
    if not params:
        kind = type(model.encoder.layers[0].attention.core).__name__
        raise ConfigError(f"attention transfer: {kind} has no parameters of its own to train",
                          fix="use attention transfer with a kind that learns (Linformer), or leave it off")
    if steps < 1:
        raise ConfigError(f"attention transfer steps must be ≥ 1, got {steps}")
    run = forward or (lambda b: model(b["input_ids"], attention_mask=b["attention_mask"]))
    layers = list(model.encoder.layers)
    wrapped = [_TeacherForced(layer.attention.core) for layer in layers]
    frozen = {p: p.requires_grad for p in model.parameters()}
    optimizer = torch.optim.Adam(params, lr=lr)
    was_training = model.training
    history: List[float] = []
    started = time.perf_counter()
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for layer, wrapper in zip(layers, wrapped):
            layer.attention.core = wrapper

        def probe_error() -> Optional[float]:
            if not probe:
                return None
            errors = []
            for batch in probe:
                with torch.no_grad():
                    run(batch)
                errors += [float(e.detach()) for w in wrapped for e in w.errors]
                for w in wrapped:
                    w.errors.clear()
            return sum(errors) / len(errors)

        error_before = probe_error()
        taken = 0
        for batch in batches:
            if taken == steps:
                break
            with torch.no_grad():
                run(batch)
            loss = torch.stack([e for w in wrapped for e in w.errors]).mean()
            for w in wrapped:
                w.errors.clear()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            taken += 1
        error_after = probe_error()
    finally:
        for layer, wrapper in zip(layers, wrapped):
            layer.attention.core = wrapper.core
        for p in params:  # no transfer gradient may reach the fine-tuning that follows
            p.grad = None
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        model.train(was_training)
    if not history:
        raise ConfigError("attention transfer: no training batch to learn from", fix="give it training data")
    report = {"steps": len(history), "error_first_batch": history[0], "error_last_batch": history[-1],
              "seconds": time.perf_counter() - started}
    if probe:
        report.update(error_before=error_before, error_after=error_after, probe_batches=len(probe))
    return report


def length_sorted_batches(lengths: List[int], batch_size: int, seed: int) -> Iterable[List[int]]:
    """Endless batches of indices: seeded shuffles, sorted by length within chunks of 50 batches (little
    padding), each chunk's batches in random order."""
    generator = torch.Generator().manual_seed(seed)
    n = len(lengths)
    while n:
        order = torch.randperm(n, generator=generator).tolist()
        chunk = 50 * batch_size
        for start in range(0, n, chunk):
            block = sorted(order[start:start + chunk], key=lambda i: lengths[i])
            batches = [block[i:i + batch_size] for i in range(0, len(block), batch_size)]
            for j in torch.randperm(len(batches), generator=generator).tolist():
                yield batches[j]
