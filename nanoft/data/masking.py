"""Masked-LM masks: which tokens to predict, and what the model sees in their place.

BERT's recipe: pick `rate` of the non-special tokens (or of whole words: all pieces of a word
together), then show 80% of the picked tokens as the mask token, 10% as a random token and leave 10%
unchanged; the model predicts the original token at every picked position.

Masks are a pure function of (seed, stream, example index): `stream` is the epoch while training
(new masks every epoch) and `EVAL_STREAM` for evaluation (one fixed mask, so perplexities of two
runs or two checkpoints are comparable). Nothing depends on the order batches are drawn in, so a
resumed run sees exactly the masks the uninterrupted run would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from nanoft.data.collate import collate
from nanoft.errors import DataError

IGNORE = -100  # label of a position that is not predicted
EVAL_STREAM = 2**31 - 1  # the stream of the fixed evaluation mask (training streams are epochs)
MASK_TOKENS = ("[MASK]", "<mask>")
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "<pad>", "<s>", "</s>", "<mask>", "<unk>")


@dataclass
class Masker:
    """Draws BERT-style masks for token blocks; `replacements` are the ids a random replacement draws from."""

    mask_id: int
    replacements: np.ndarray  # (n,) int: every vocabulary id except the special tokens
    rate: float = 0.15
    whole_word: bool = False
    seed: int = 0

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, rate: float, whole_word: bool, seed: int) -> "Masker":
        """A masker with the tokenizer's mask token; a tokenizer without one is a DataError."""
        mask_id = next((tokenizer.token_to_id(t) for t in MASK_TOKENS if tokenizer.token_to_id(t) is not None), None)
        if mask_id is None:
            raise DataError("the tokenizer has no mask token ([MASK] or <mask>)", path=str(tokenizer.source),
                            fix="use a tokenizer made for masked-LM (BERT, RoBERTa, DistilBERT)")
        specials = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS} - {None}
        replacements = np.setdiff1d(np.arange(tokenizer.vocab_size), np.fromiter(specials, dtype=np.int64))
        return cls(mask_id, replacements, rate, whole_word, seed)

    def rng(self, stream: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, index])

    def choose(self, special: np.ndarray, word_ids: Optional[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """(T,) bool: the positions to predict. `rate` of the non-special tokens (at least one), rounded;
        with whole words, the number of words whose token count comes closest to that."""
        candidates = np.flatnonzero(~special)
        chosen = np.zeros(len(special), dtype=bool)
        if len(candidates) == 0:
            return chosen
        target = max(1, int(round(self.rate * len(candidates))))
        if not self.whole_word or word_ids is None:
            chosen[rng.choice(candidates, size=target, replace=False)] = True
            return chosen
        words, sizes = np.unique(word_ids[candidates], return_counts=True)
        order = rng.permutation(len(words))
        covered = np.cumsum(sizes[order])  # tokens covered by the first k+1 words of the shuffled order
        k = int(np.argmin(np.abs(covered - target))) + 1
        chosen[candidates] = np.isin(word_ids[candidates], words[order[:k]])
        return chosen

    def mask(self, ids: np.ndarray, special: np.ndarray, word_ids: Optional[np.ndarray], stream: int,
             index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of one block: 80% of the chosen tokens become the mask token, 10% a random token,
        10% stay; labels hold the original id at chosen positions and IGNORE elsewhere."""
        rng = self.rng(stream, index)
        chosen = self.choose(special, word_ids, rng)
        positions = np.flatnonzero(chosen)
        draw = rng.random(len(positions))
        inputs = ids.astype(np.int64, copy=True)
        labels = np.full(len(ids), IGNORE, dtype=np.int64)
        labels[positions] = ids[positions]
        inputs[positions[draw < 0.8]] = self.mask_id
        randomised = positions[(draw >= 0.8) & (draw < 0.9)]
        inputs[randomised] = self.replacements[rng.integers(0, len(self.replacements), size=len(randomised))]
        return inputs, labels

    def collate(self, data: Any, indices: Sequence[int], pad_token_id: int, pad_to_multiple_of: Optional[int],
                stream: int) -> Dict[str, torch.Tensor]:
        """A padded batch of masked blocks. Besides the usual keys: `masked_positions` `(n,)`, the chosen
        positions as flat indices into `(batch * seq)`, and `mlm_labels` `(n,)`, their original ids."""
        batch = collate(data, indices, pad_token_id, pad_to_multiple_of)
        input_ids = batch["input_ids"].numpy().copy()  # (B, T)
        labels = np.full(input_ids.shape, IGNORE, dtype=np.int64)  # (B, T)
        for row, i in enumerate(indices):
            n = int(data.lengths[i])
            words = data.words_of(i) if self.whole_word else None
            input_ids[row, :n], labels[row, :n] = self.mask(data.ids(i), data.special_of(i), words, stream, i)
        flat = labels.reshape(-1)  # (B * T,)
        positions = np.flatnonzero(flat != IGNORE)
        batch["input_ids"] = torch.from_numpy(input_ids)
        batch["masked_positions"] = torch.from_numpy(positions.astype(np.int64))
        batch["mlm_labels"] = torch.from_numpy(flat[positions])
        return batch


def label_grid(batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """`(B, T)` labels (IGNORE where nothing is predicted), as `transformers`' MLM losses take them."""
    grid = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.long)
    grid.view(-1)[batch["masked_positions"]] = batch["mlm_labels"]
    return grid


__all__ = ["Masker", "IGNORE", "EVAL_STREAM", "label_grid"]
