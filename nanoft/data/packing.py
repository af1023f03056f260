"""Packing a corpus for masked-LM training: one token stream cut into full blocks, no padding.

Each document is tokenized with the family's special tokens (`[CLS] doc [SEP]`, `<s> doc </s>`; a
text pair as the family joins pairs), the documents are laid end to end, and the stream is cut into
blocks of `block_size` tokens. Only the last block may be shorter, so the blocks concatenated are the
stream exactly: no token lost, none repeated. Alongside the ids the stream records which tokens are
special (never masked) and a word index per token (whole-word masking masks a word's pieces together).

A `PackedDataset` is an `EncodedDataset` whose examples are the blocks, so the samplers and
`collate` work on it unchanged. It also records where each document starts, so attention can be kept
within documents (`document_ids`: the block-diagonal document mask).

The token stream is computed once per (tokenizer, documents) and cached on disk like fine-tuning's
encoded ids (`nanoft.data.encode`: same folder, checksummed `.npz`, never unpickled). The key hashes the
documents' text itself, so a changed file, another --text-column, another held-out split or another
tokenizer is another entry; the block size is not in it (blocks are cut after the cache), so runs with
different --max-length share one entry.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from nanoft.data.encode import EncodedDataset, cache_root, load_arrays, save_arrays
from nanoft.errors import DataError

CHUNK = 8192  # documents per encode_batch call
STREAM_CACHE_VERSION = 1
# The cached stream: ids, special-token flags, word starts (word ids are their running count) and each
# document's token count (document ids are derived from those).
_STREAM = {"input_ids": np.int32, "special": np.bool_, "word_start": np.bool_, "doc_lengths": np.int64}


@dataclass
class PackedDataset(EncodedDataset):
    """Blocks of a packed token stream; `special`, `word_ids` and `document_ids` run parallel to `input_ids`."""

    special: Optional[np.ndarray] = None  # (total_tokens,) bool: [CLS]/[SEP]/<s>/</s>, never masked
    word_ids: Optional[np.ndarray] = None  # (total_tokens,) int64: index of the word a token belongs to; -1 special
    documents: int = 0
    document_ids: Optional[np.ndarray] = None  # (total_tokens,) int64: index of the document a token belongs to

    def special_of(self, i: int) -> np.ndarray:
        return self.special[self.offsets[i]:self.offsets[i + 1]]

    def words_of(self, i: int) -> np.ndarray:
        return self.word_ids[self.offsets[i]:self.offsets[i + 1]]

    def documents_of(self, i: int) -> np.ndarray:
        return self.document_ids[self.offsets[i]:self.offsets[i + 1]]


def document_grid(data: PackedDataset, indices: Sequence[int], width: int) -> np.ndarray:
    """(B, width) int64: the document of each token of the blocks `indices`, -1 at padding. A document split
    by a block boundary has the same id on both sides; the model cuts sequences at row ends anyway."""
    grid = np.full((len(indices), width), -1, dtype=np.int64)
    for row, i in enumerate(indices):
        docs = data.documents_of(i)
        grid[row, :len(docs)] = docs
    return grid


def _stream_arrays(tokenizer: Any, texts: Sequence[str], pairs: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    """The documents laid end to end, untruncated, as the arrays the cache stores (`_STREAM`)."""
    backend = tokenizer.backend
    backend.no_truncation()
    ids: List[np.ndarray] = []
    special: List[np.ndarray] = []
    starts: List[np.ndarray] = []
    for begin in range(0, len(texts), CHUNK):
        end = min(begin + CHUNK, len(texts))
        inputs = list(texts[begin:end]) if pairs is None else [
            text if pair is None else (text, pair) for text, pair in zip(texts[begin:end], pairs[begin:end])]
        for enc in backend.encode_batch(inputs, add_special_tokens=True):
            n = len(enc.ids)
            is_special = np.asarray(enc.special_tokens_mask, dtype=bool)
            # a token starts a new word when its (sequence, word) differs from the previous token's
            key = [(s, w) for s, w in zip(enc.sequence_ids, enc.word_ids)]
            new_word = np.fromiter((i == 0 or key[i] != key[i - 1] for i in range(n)), dtype=bool, count=n)
            ids.append(np.asarray(enc.ids, dtype=np.int32))
            special.append(is_special)
            starts.append(new_word | is_special)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    if not ids:
        return {"input_ids": np.zeros(0, np.int32), "special": np.zeros(0, bool), "word_start": np.zeros(0, bool),
                "doc_lengths": lengths}
    return {"input_ids": np.concatenate(ids), "special": np.concatenate(special),
            "word_start": np.concatenate(starts), "doc_lengths": lengths}


def _word_ids(stream: Dict[str, np.ndarray]) -> np.ndarray:
    word_ids = np.cumsum(stream["word_start"]) - 1  # (total,) a running word index across documents
    word_ids[stream["special"]] = -1
    return word_ids.astype(np.int64)


def tokenize_stream(tokenizer: Any, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> tuple:
    """(ids int32, special bool, word_ids int64) of all documents laid end to end, untruncated."""
    stream = _stream_arrays(tokenizer, texts, pairs)
    return stream["input_ids"], stream["special"], _word_ids(stream)


def stream_key(tokenizer: Any, texts: Sequence[str], pairs: Optional[Sequence[str]]) -> str:
    """Everything the token stream depends on: the tokenizer and every document's text (and pair)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([STREAM_CACHE_VERSION, tokenizer.fingerprint, len(texts), pairs is not None]).encode())
    for text in texts:
        h.update(text.encode("utf-8") + b"\x00")
    for text in pairs or []:
        h.update(b"\x02" if text is None else b"\x01" + text.encode("utf-8") + b"\x00")
    return h.hexdigest()


def cached_stream(tokenizer: Any, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                  cache_dir: Union[str, Path, None] = None, use_cache: bool = True) -> tuple:
    """(the `_STREAM` arrays, whether they came from the cache): tokenized once, then read back."""
    path = cache_root(cache_dir) / "packed" / f"{stream_key(tokenizer, texts, pairs)}.npz"
    stream = load_arrays(path, _STREAM) if use_cache and path.is_file() else None
    if stream is not None and (len(stream["doc_lengths"]) != len(texts)
                               or int(stream["doc_lengths"].sum()) != len(stream["input_ids"])):
        stream = None  # an entry for other documents (a key collision or a planted file): rebuilt
    if stream is not None:
        return stream, True
    stream = _stream_arrays(tokenizer, texts, pairs)
    if use_cache:
        save_arrays(path, stream)
    return stream, False


def pack(tokenizer: Any, texts: Sequence[str], block_size: int, pairs: Optional[Sequence[str]] = None,
         source: str = "corpus", cache_dir: Union[str, Path, None] = None, use_cache: bool = True) -> PackedDataset:
    """The documents' token stream cut into blocks of `block_size` (the last one may be shorter); the stream
    comes from the disk cache when these documents were tokenized before with this tokenizer."""
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise DataError("the corpus is empty (no non-blank document)", path=source,
                        fix="give a file with one document per line")
    stream, from_cache = cached_stream(tokenizer, texts, pairs, cache_dir, use_cache)
    ids, special = stream["input_ids"], stream["special"]
    total = len(ids)
    if total < block_size:
        raise DataError(f"the corpus has {total} tokens, fewer than one block of {block_size}", path=source,
                        fix="give more text or a smaller --max-length")
    offsets = np.append(np.arange(0, total, block_size, dtype=np.int64), total)  # (blocks + 1,)
    document_ids = np.repeat(np.arange(len(stream["doc_lengths"]), dtype=np.int64), stream["doc_lengths"])
    return PackedDataset(ids, np.zeros(total, dtype=np.int8), offsets, labels=None, from_cache=from_cache,
                         special=special, word_ids=_word_ids(stream), documents=len(texts),
                         document_ids=document_ids)


__all__ = ["PackedDataset", "pack", "tokenize_stream", "cached_stream", "document_grid"]
