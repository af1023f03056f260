"""Token ids for a split, computed once and cached on disk.

An `EncodedDataset` keeps all examples' ids back to back in one flat array plus offsets (no
per-example Python lists, no padding): example i is `input_ids[offsets[i]:offsets[i + 1]]`.
That is what the cache stores, in one `.npz` per (examples fingerprint, tokenizer fingerprint,
max length, truncation strategy); the examples fingerprint already covers the file's content hash, the
text columns and the selected rows. A second run with the same key loads the arrays instead of tokenizing.
Each entry also stores a sha256 of its arrays, checked on load: a truncated, corrupted or planted
file is rebuilt with a warning, never fed to training, and never unpickled (`allow_pickle=False`).

Tokenizing goes through the tokenizer's `encode_batch` in chunks; the fast (Rust) tokenizer
spreads each chunk over all cores itself, so Python-side workers would only add copies.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from nanoft.io import atomic_write_bytes
from nanoft.weights.tokenizer import Truncation

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: entries carry a sha256 of their arrays
CHUNK = 8192  # examples per encode_batch call: big enough to keep all cores busy, bounded memory


@dataclass
class EncodedDataset:
    """Unpadded token ids of n examples, with labels (int64, float32, or None when unlabelled)."""

    input_ids: np.ndarray  # (total_tokens,) int32, all examples back to back
    token_type_ids: np.ndarray  # (total_tokens,) int8
    offsets: np.ndarray  # (n + 1,) int64
    labels: Optional[np.ndarray]  # (n,)
    key: str = ""  # cache key
    from_cache: bool = False

    def __post_init__(self) -> None:
        self.lengths = np.diff(self.offsets)  # (n,) tokens per example, special tokens included

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def ids(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i]:self.offsets[i + 1]]

    def types(self, i: int) -> np.ndarray:
        return self.token_type_ids[self.offsets[i]:self.offsets[i + 1]]


def cache_root(cache_dir: Union[str, Path, None] = None) -> Path:
    """cache_dir, else $NANOFT_CACHE_DIR, else ~/.cache/nanoft."""
    if cache_dir is None:
        cache_dir = os.environ.get("NANOFT_CACHE_DIR") or Path.home() / ".cache" / "nanoft"
    return Path(cache_dir).expanduser()


def _content_hash(examples: Any) -> str:
    """Fingerprint for examples built by hand (no file behind them): hash every text."""
    h = hashlib.blake2b(digest_size=16)
    for text in examples.texts:
        h.update(text.encode("utf-8") + b"\x00")
    h.update(b"\x01pairs\x01")
    for text in examples.text_pairs or []:
        h.update(text.encode("utf-8") + b"\x00")
    return h.hexdigest()


def cache_key(examples: Any, tokenizer: Any, max_length: int, truncation: Optional[Truncation] = None) -> str:
    """Everything the ids depend on; two truncation strategies never share an entry."""
    parts = [CACHE_VERSION, examples.fingerprint or _content_hash(examples), len(examples),
             examples.text_pairs is not None, tokenizer.fingerprint, int(max_length),
             (truncation or Truncation()).key()]
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def tokenize(examples: Any, tokenizer: Any, max_length: int, truncation: Optional[Truncation] = None) -> tuple:
    """(input_ids int32, token_type_ids int8, offsets int64) through the tokenizer's batch API."""
    n = len(examples)
    cut = {} if truncation is None else {"truncation": truncation}  # a stand-in tokenizer may not know it
    ids_chunks, type_chunks, lengths = [], [], np.zeros(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        pairs = examples.text_pairs[start:stop] if examples.text_pairs is not None else None
        ids, types = tokenizer.encode_batch(examples.texts[start:stop], pairs, max_length=max_length, **cut)
        lengths[start:stop] = [len(x) for x in ids]
        count = int(lengths[start:stop].sum())
        ids_chunks.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=count))
        type_chunks.append(np.fromiter(itertools.chain.from_iterable(types), dtype=np.int8, count=count))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    empty = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int8)]
    return (np.concatenate(ids_chunks or empty[0]), np.concatenate(type_chunks or empty[1]), offsets)


_ARRAYS = {"input_ids": np.int32, "token_type_ids": np.int8, "offsets": np.int64}  # name -> dtype, in file order


def _checksum(arrays: Dict[str, np.ndarray]) -> str:
    """sha256 over each array's name, dtype, shape and bytes: a truncated or flipped entry never matches."""
    h = hashlib.sha256()
    for name, a in arrays.items():
        h.update(f"{name}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def save_arrays(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Write a cache entry of named arrays atomically (a concurrent reader sees no file or a whole one), with
    its checksum. Shared by every on-disk cache of token ids (this module's, packing's token streams)."""
    digest = np.array(_checksum(arrays))  # a fixed-width str array: no pickle needed
    atomic_write_bytes(path, lambda f: np.savez(f, sha256=digest, **arrays),
                       fix="set $NANOFT_CACHE_DIR to a writable folder with free space")


def load_arrays(path: Path, dtypes: Dict[str, Any]) -> Optional[Dict[str, np.ndarray]]:
    """The entry's arrays ({name: dtype}, in file order), or None (with a warning) for an unreadable or damaged
    entry; never unpickled."""
    try:
        with np.load(path, allow_pickle=False) as z:  # a pickle planted in the cache is refused, never run
            arrays = {name: z[name] for name in dtypes}
            stored = str(z["sha256"])
    except Exception as e:  # a damaged cache file is rebuilt, never trusted
        logger.warning("rebuilding unreadable cache entry %s (%s)", path, e)
        return None
    if any(a.dtype != dtypes[name] for name, a in arrays.items()) or stored != _checksum(arrays):
        logger.warning("rebuilding corrupted cache entry %s (checksum mismatch)", path)
        return None
    return arrays


def _save(path: Path, input_ids: np.ndarray, token_type_ids: np.ndarray, offsets: np.ndarray) -> None:
    save_arrays(path, dict(zip(_ARRAYS, (input_ids, token_type_ids, offsets))))


def _load(path: Path, n: int) -> Optional[tuple]:
    """The cached arrays, or None (with a warning) for an entry that is unreadable, damaged or for other examples."""
    loaded = load_arrays(path, _ARRAYS)
    if loaded is None:
        return None
    arrays = tuple(loaded.values())
    if len(arrays[2]) != n + 1 or arrays[2][-1] != len(arrays[0]):
        logger.warning("rebuilding cache entry %s: it does not match the examples", path)
        return None
    return arrays


def encode(task_or_examples: Any, tokenizer: Any, max_length: int, cache_dir: Union[str, Path, None] = None, *,
           split: str = "train", data_dir: Union[str, Path, None] = None, use_cache: bool = True,
           truncation: Optional[Truncation] = None) -> EncodedDataset:
    """Encode `Examples` (or `task.load(data_dir, split)` when given a Task), through the disk cache;
    single texts longer than max_length are cut by `truncation` (default: keep the head)."""
    examples = task_or_examples.load(data_dir, split) if hasattr(task_or_examples, "load") else task_or_examples
    key = cache_key(examples, tokenizer, max_length, truncation)
    path = cache_root(cache_dir) / "encoded" / f"{key}.npz"
    arrays = _load(path, len(examples)) if use_cache and path.is_file() else None
    from_cache = arrays is not None
    if arrays is None:
        arrays = tokenize(examples, tokenizer, max_length, truncation)
        if use_cache:
            _save(path, *arrays)
    labels = None if examples.labels is None else np.asarray(examples.labels)
    return EncodedDataset(*arrays, labels=labels, key=key, from_cache=from_cache)
