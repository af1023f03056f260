"""Training a tokenizer on a corpus, for models pretrained from scratch (`nanoft pretrain --train-tokenizer N`).

Each family gets the tokenizer its checkpoints ship, built with the `tokenizers` library's trainers:

- BERT / DistilBERT: WordPiece, lowercased, BERT's normaliser and pre-tokenizer, `[CLS] a [SEP] b [SEP]`;
  special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` at ids 0-4 (pad 0, as ModelConfig assumes).
- RoBERTa: byte-level BPE (every byte in the alphabet, so no text is ever unknown), `<s> a </s></s> b </s>`;
  special tokens `<s> <pad> </s> <unk> <mask>` at ids 0-4 (pad 1, as RoBERTa's position offset assumes).

The result is an ordinary `Tokenizer`: it saves as `tokenizer.json` beside the model and `load_tokenizer`
reads it back. The vocabulary may end a little above `vocab_size` (WordPiece keeps every character it saw);
a new model takes the tokenizer's real size.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _RustTokenizer

from nanoft.errors import ConfigError
from nanoft.weights.family import get_family
from nanoft.weights.tokenizer import Tokenizer

SPECIALS = {"wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            "bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}
MIN_VOCAB = {"wordpiece": len(SPECIALS["wordpiece"]) + 1,
             "bpe": len(SPECIALS["bpe"]) + len(pre_tokenizers.ByteLevel.alphabet())}


def check_vocab_size(family: str, vocab_size: int) -> None:
    kind = get_family(family).tokenizer
    if vocab_size < MIN_VOCAB[kind]:
        raise ConfigError(f"--train-tokenizer {vocab_size} is too small for a {kind} vocabulary",
                          fix=f"give at least {MIN_VOCAB[kind]} (BERT uses 30522, RoBERTa 50265)")


def _wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool) -> _RustTokenizer:
    specials = SPECIALS["wordpiece"]
    tok = _RustTokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                              show_progress=False, continuing_subword_prefix="##"))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _byte_level_bpe(texts: Iterable[str], vocab_size: int) -> _RustTokenizer:
    specials = SPECIALS["bpe"]
    tok = _RustTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=specials[:4] + [AddedToken("<mask>", lstrip=True, special=True)]))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")),
                                                      trim_offsets=True, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Sequence[str], family: str, vocab_size: int, lowercase: bool = True,
                    source: str = "trained tokenizer") -> Tokenizer:
    """A new tokenizer of `family`'s kind with about `vocab_size` tokens, trained on `texts` (seeded by nothing:
    the trainers are deterministic for the same texts)."""
    check_vocab_size(family, vocab_size)
    kind = get_family(family).tokenizer
    backend = _wordpiece(texts, vocab_size, lowercase) if kind == "wordpiece" else _byte_level_bpe(texts, vocab_size)
    pad = SPECIALS[kind][0 if kind == "wordpiece" else 1]
    return Tokenizer(backend=backend, family=family, kind="tokenizer.json", pad_token_id=backend.token_to_id(pad),
                     source=source)


__all__ = ["train_tokenizer", "check_vocab_size", "SPECIALS"]
