"""Which precision is fast here: bf16 autocast only where the hardware does bf16 natively.

On CPUs without AVX512-BF16/AMX, bf16 matmuls are emulated and ~100x slower than fp32, so
`--precision auto` must detect, not assume.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 on CUDA with bf16 support or on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A loss scaler for fp16 (CUDA only); bf16 and fp32 need none."""
    if precision == "fp16":
        if device.type != "cuda":
            from nanoft.errors import ConfigError

            raise ConfigError("fp16 training needs a CUDA GPU", fix="use --precision bf16 or fp32 on CPU")
        return torch.amp.GradScaler("cuda")
    return None
