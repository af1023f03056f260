"""Packing a corpus for masked-LM training: one token stream cut into full blocks, no padding.

Each document is tokenized with the family's special tokens (`[CLS] doc [SEP]`, `<s> doc </s>`; a
text pair as the family joins pairs), the documents are laid end to end, and the stream is cut into
blocks of `block_size` tokens. Only the last block may be shorter, so the blocks concatenated are the
stream exactly: no token lost, none repeated. Alongside the ids the stream records which tokens are
special (never masked) and a word index per token (whole-word masking masks a word's pieces together).

A `PackedDataset` is an `EncodedDataset` whose examples are the blocks, so the samplers and
`collate` work on it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from nanoft.data.encode import EncodedDataset
from nanoft.errors import DataError

CHUNK = 8192  # documents per encode_batch call


@dataclass
class PackedDataset(EncodedDataset):
    """Blocks of a packed token stream; `special` and `word_ids` run parallel to `input_ids`."""

    special: Optional[np.ndarray] = None  # (total_tokens,) bool: [CLS]/[SEP]/<s>/</s>, never masked
    word_ids: Optional[np.ndarray] = None  # (total_tokens,) int64: index of the word a token belongs to; -1 special
    documents: int = 0

    def special_of(self, i: int) -> np.ndarray:
        return self.special[self.offsets[i]:self.offsets[i + 1]]

    def words_of(self, i: int) -> np.ndarray:
        return self.word_ids[self.offsets[i]:self.offsets[i + 1]]


def tokenize_stream(tokenizer: Any, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> tuple:
    """(ids int32, special bool, word_ids int64) of all documents laid end to end, untruncated."""
    backend = tokenizer.backend
    backend.no_truncation()
    ids: List[np.ndarray] = []
    special: List[np.ndarray] = []
    starts: List[np.ndarray] = []
    for begin in range(0, len(texts), CHUNK):
        end = min(begin + CHUNK, len(texts))
        inputs = list(texts[begin:end]) if pairs is None else list(zip(texts[begin:end], pairs[begin:end]))
        for enc in backend.encode_batch(inputs, add_special_tokens=True):
            n = len(enc.ids)
            is_special = np.asarray(enc.special_tokens_mask, dtype=bool)
            # a token starts a new word when its (sequence, word) differs from the previous token's
            key = [(s, w) for s, w in zip(enc.sequence_ids, enc.word_ids)]
            new_word = np.fromiter((i == 0 or key[i] != key[i - 1] for i in range(n)), dtype=bool, count=n)
            ids.append(np.asarray(enc.ids, dtype=np.int32))
            special.append(is_special)
            starts.append(new_word | is_special)
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, np.int64)
    flat_special = np.concatenate(special)
    word_ids = np.cumsum(np.concatenate(starts)) - 1  # (total,) a running word index across documents
    word_ids[flat_special] = -1
    return np.concatenate(ids), flat_special, word_ids.astype(np.int64)


def pack(tokenizer: Any, texts: Sequence[str], block_size: int, pairs: Optional[Sequence[str]] = None,
         source: str = "corpus") -> PackedDataset:
    """The documents' token stream cut into blocks of `block_size` (the last one may be shorter)."""
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise DataError("the corpus is empty (no non-blank document)", path=source,
                        fix="give a file with one document per line")
    ids, special, word_ids = tokenize_stream(tokenizer, texts, pairs)
    total = len(ids)
    if total < block_size:
        raise DataError(f"the corpus has {total} tokens, fewer than one block of {block_size}", path=source,
                        fix="give more text or a smaller --max-length")
    offsets = np.append(np.arange(0, total, block_size, dtype=np.int64), total)  # (blocks + 1,)
    return PackedDataset(ids, np.zeros(total, dtype=np.int8), offsets, labels=None, special=special,
                         word_ids=word_ids, documents=len(texts))


__all__ = ["PackedDataset", "pack", "tokenize_stream"]
