"""Reading safetensors files by memory map, with clear errors; writing them atomically.

A safetensors file is `u64 header_len | JSON header | raw bytes`, the header giving each
tensor's dtype, shape and byte range. We map the file copy-on-write (`torch.from_file`,
`shared=False`) and hand out views into that map, so loading a checkpoint copies nothing until a
tensor is converted or written to — and we check every range against the file size first, so a
truncated or corrupt file is a one-line error, not a crash deep in torch.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Dict, Iterable, Tuple

import torch

from nanoft.errors import CheckpointError
from nanoft.io import atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> Tuple[Dict[str, dict], int]:
    """The tensor table and the byte offset where data starts; validates ranges against file size."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("safetensors file is empty", path=str(path), fix="re-save or re-download the checkpoint")
    if size < 8:
        raise CheckpointError(f"safetensors file is truncated ({size} bytes)", path=str(path),
                              fix="re-save or re-download the checkpoint")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER or 8 + header_len > size:
            raise CheckpointError(f"not a valid safetensors file (header of {header_len} bytes in a {size}-byte file)",
                                  path=str(path), fix="re-save or re-download the checkpoint")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError("safetensors header is not valid JSON (corrupt file)", path=str(path),
                              fix="re-save or re-download the checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError("safetensors header is not a JSON object (corrupt file)", path=str(path))
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"tensor {name!r} has a malformed entry in the header (corrupt file)",
                                  path=str(path)) from None
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CheckpointError(f"tensor {name!r} has unsupported dtype {dtype!r}", path=str(path))
        if not isinstance(shape, list) or not all(_is_size(n) for n in (*shape, begin, end)):
            raise CheckpointError(f"tensor {name!r} has shape {shape!r} and offsets {[begin, end]!r} in the header: "
                                  "not all sizes (corrupt file)", path=str(path))
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise CheckpointError(f"tensor {name!r} has {end - begin} bytes for shape {shape} {dtype} (corrupt file)",
                                  path=str(path))
        if data_start + end > size:
            raise CheckpointError(f"file is truncated: tensor {name!r} ends at byte {data_start + end} "
                                  f"but the file has {size}", path=str(path),
                                  fix="re-save or re-download the checkpoint")
    return header, data_start


def _is_size(value: object) -> bool:
    """A JSON number usable as a dimension or byte offset: a non-negative int (not a bool, float or string)."""
    return type(value) is int and value >= 0


class SafetensorsFile:
    """A memory-mapped safetensors file: `keys()`, `shape(name)`, `tensor(name)` (a view, no copy)."""

    def __init__(self, path: "str | Path") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError("safetensors file not found", path=str(self.path))
        self.header, self.data_start = read_header(self.path)
        self._bytes = None

    def keys(self) -> Iterable[str]:
        return self.header.keys()

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def _map(self) -> torch.Tensor:
        if self._bytes is None:
            size = self.path.stat().st_size
            self._bytes = torch.from_file(str(self.path), shared=False, size=size, dtype=torch.uint8)
        return self._bytes

    def tensor(self, name: str) -> torch.Tensor:
        info = self.header[name]
        dtype = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = self._map()[self.data_start + begin:self.data_start + end]
        if (self.data_start + begin) % raw.element_size() or (self.data_start + begin) % dtype.itemsize:
            raw = raw.clone()  # unaligned: views of another dtype need an aligned start
        if dtype == torch.bool:
            return raw.view(torch.bool).reshape(info["shape"])
        return raw.view(dtype).reshape(info["shape"])


_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def save_file(tensors: Dict[str, torch.Tensor], path: "str | Path", metadata: Dict[str, str] | None = None) -> None:
    """Write a safetensors file (streamed tensor by tensor, atomically: temp file, then rename)."""
    header: Dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    ordered = sorted(tensors.items())
    for name, t in ordered:
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"cannot save tensor {name!r} of dtype {t.dtype}")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned for zero-copy views

    def write(f) -> None:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, t in ordered:
            data = t.detach().to("cpu").contiguous().reshape(-1)
            if data.numel():
                f.write(data.view(torch.uint8).numpy().data)

    atomic_write_bytes(Path(path), write)
