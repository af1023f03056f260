"""Tokenizers for the model families, built on the `tokenizers` library (Rust, fast, batched).

`load_tokenizer(dir)` prefers the directory's `tokenizer.json`; without one it builds the
family's tokenizer (`Family.tokenizer`) from `vocab.txt` (BERT/DistilBERT WordPiece) or `vocab.json` +
`merges.txt` (RoBERTa byte-level BPE). Any padding/truncation preset stored in a shipped tokenizer.json is
switched off: nanoft truncates explicitly per call and pads per batch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from nanoft.errors import CheckpointError, ConfigError
from nanoft.weights.family import find_family, get_family


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"not valid JSON ({e.__class__.__name__})", path=str(path)) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"holds a JSON {type(value).__name__}, not an object", path=str(path),
                              fix="repair or re-export the checkpoint")
    return value


TRUNCATIONS = ("head", "tail", "head+tail")


@dataclass(frozen=True)
class Truncation:
    """Which tokens of a single text longer than max_length are kept; its special tokens always stay in place.

    head keeps the first tokens (the usual cut); tail keeps the last; head+tail keeps the first `head_tokens`
    and fills the rest of the budget from the end (Sun et al. 2019 found 128 + 382 best for BERT on IMDB:
    reviews tend to open and close with the verdict). Text pairs always cut longest-first from the end.
    """

    strategy: str = field(default="head", metadata={
        "help": "Which tokens of a text longer than --max-length to keep: head (the first), tail (the last), or "
                "head+tail (the first --truncation-head-tokens and the rest from the end). Text pairs always "
                "cut longest-first.", "choices": TRUNCATIONS})
    head_tokens: int = field(default=128, metadata={
        "help": "With --truncation head+tail: how many tokens to keep from the start; the rest of the budget "
                "comes from the end."})

    def __post_init__(self) -> None:
        if self.strategy not in TRUNCATIONS:
            raise ConfigError(f"unknown truncation {self.strategy!r}", fix=f"use one of {', '.join(TRUNCATIONS)}")
        if not isinstance(self.head_tokens, int) or self.head_tokens < 0:
            raise ConfigError(f"truncation_head_tokens must be an int ≥ 0, got {self.head_tokens!r}")

    @classmethod
    def from_config(cls, values: Any) -> "Truncation":
        """From a TrainConfig or a run's config.toml as a dict (a run written before the option: head)."""
        get = values.get if isinstance(values, Mapping) else lambda key, default: getattr(values, key, default)
        return cls(get("truncation", cls.strategy), get("truncation_head_tokens", cls.head_tokens))

    def check(self, max_length: int) -> None:
        """head+tail with a head as long as max_length is only head: refuse it rather than ignore the tail."""
        if self.strategy == "head+tail" and self.head_tokens >= max_length:
            raise ConfigError(f"truncation_head_tokens ({self.head_tokens}) must be below max_length ({max_length}) "
                              "with head+tail, or nothing is kept from the tail",
                              fix=f"pass --truncation-head-tokens below {max_length}, e.g. {max_length // 4}")

    def key(self) -> List[Any]:
        """What decides the ids (for cache keys): head_tokens only matters for head+tail."""
        return [self.strategy, self.head_tokens if self.strategy == "head+tail" else None]

    def keep(self, sequence_ids: Sequence[Optional[int]], max_length: int) -> List[int]:
        """Positions kept from one encoded single text: every special token (sequence id None) and the
        text tokens the strategy picks, max_length in all (the head clamped to what fits)."""
        text = [j for j, s in enumerate(sequence_ids) if s is not None]
        budget = max(0, max_length - (len(sequence_ids) - len(text)))
        if len(text) <= budget:
            return list(range(len(sequence_ids)))
        head = {"head": budget, "tail": 0, "head+tail": min(self.head_tokens, budget)}[self.strategy]
        kept = set(text[:head]) | set(text[len(text) - (budget - head):])
        return [j for j, s in enumerate(sequence_ids) if s is None or j in kept]


@dataclass
class Tokenizer:
    """Encode texts (or text pairs) to token ids with the family's special tokens; no padding."""

    backend: _RustTokenizer
    family: str
    kind: str  # "tokenizer.json", "wordpiece", "bpe"
    pad_token_id: int
    source: str

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __post_init__(self) -> None:
        # Hashed once, with padding/truncation off: encode calls change truncation, not identity.
        self.backend.no_padding()
        self.backend.no_truncation()
        self.fingerprint = hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()[:16]

    def _truncate(self, max_length: Optional[int]) -> None:
        if max_length is None:
            self.backend.no_truncation()
        else:
            self.backend.enable_truncation(max_length=max_length, strategy="longest_first")

    def encode_batch(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                     max_length: Optional[int] = 512,
                     truncation: Optional[Truncation] = None) -> Tuple[List[List[int]], List[List[int]]]:
        """Token ids and token-type ids, special tokens included; single texts longer than max_length are cut
        by `truncation` (default: keep the head), pairs longest-first."""
        cut = truncation or Truncation()
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        by_hand = pairs is None and max_length is not None and cut.strategy != "head"
        self._truncate(None if by_hand else max_length)  # head and pairs: the Rust truncation, as always
        encodings = self.backend.encode_batch(inputs, add_special_tokens=True)
        ids = [e.ids for e in encodings]
        if get_family(self.family).one_token_type:  # RoBERTa: its pair processor may still emit 1s
            types = [[0] * len(e.ids) for e in encodings]
        else:
            types = [e.type_ids for e in encodings]
        if by_hand:  # whole texts were encoded: cut the long ones around their special tokens
            for i, e in enumerate(encodings):
                if len(ids[i]) > max_length:
                    keep = cut.keep(e.sequence_ids, max_length)
                    ids[i], types[i] = [ids[i][j] for j in keep], [types[i][j] for j in keep]
        return ids, types

    def encode(self, text: str, pair: Optional[str] = None, max_length: Optional[int] = 512,
               truncation: Optional[Truncation] = None) -> Tuple[List[int], List[int]]:
        ids, types = self.encode_batch([text], None if pair is None else [pair], max_length, truncation)
        return ids[0], types[0]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def save(self, directory: Union[str, Path]) -> None:
        """Write `tokenizer.json` (without padding/truncation presets) into a model directory."""
        from nanoft.io import atomic_write_text

        self.backend.no_truncation()
        atomic_write_text(Path(directory) / "tokenizer.json", self.backend.to_str())


def _wordpiece(vocab_file: Path, lowercase: bool) -> _RustTokenizer:
    vocab = {}
    with open(vocab_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            token = line.rstrip("\n")
            if token:
                vocab[token] = i
    for special in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"):
        if special not in vocab:
            raise CheckpointError(f"vocab.txt lacks the special token {special}", path=str(vocab_file))
    tok = _RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _byte_level_bpe(vocab_file: Path, merges_file: Path, add_prefix_space: bool) -> _RustTokenizer:
    vocab = _read_json(vocab_file)
    merges = []
    with open(merges_file, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) == 2:
                merges.append((parts[0], parts[1]))
    for special in ("<s>", "</s>", "<pad>"):
        if special not in vocab:
            raise CheckpointError(f"vocab.json lacks the special token {special}", path=str(vocab_file))
    tok = _RustTokenizer(models.BPE(vocab, merges, unk_token="<unk>" if "<unk>" in vocab else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                      trim_offsets=True, add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    for special in ("<s>", "</s>", "<pad>", "<unk>", "<mask>"):
        if special in vocab:
            tok.add_special_tokens([special])
    return tok


def load_tokenizer(path: Union[str, Path, None] = None) -> Tokenizer:
    """The tokenizer of a model directory (tokenizer.json, or vocab.txt, or vocab.json + merges.txt)."""
    if path is None:
        from nanoft.weights.checkpoint import default_model_path

        path = default_model_path()
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise CheckpointError("tokenizer directory does not exist", path=str(path))
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    found = find_family(config) if isinstance(config, dict) else None
    family = found.name if found else "bert"
    tok_config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}

    if (path / "tokenizer.json").is_file():
        try:
            backend = _RustTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # the Rust parser's message names the problem
            raise CheckpointError(f"cannot read tokenizer.json: {str(e).splitlines()[0]}",
                                  path=str(path / "tokenizer.json")) from None
        kind = "tokenizer.json"
    elif (path / "vocab.txt").is_file():
        backend = _wordpiece(path / "vocab.txt", lowercase=bool(tok_config.get("do_lower_case", True)))
        kind = "wordpiece"
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        backend = _byte_level_bpe(path / "vocab.json", path / "merges.txt",
                                  add_prefix_space=bool(tok_config.get("add_prefix_space", False)))
        kind = "bpe"
        if get_family(family).tokenizer != "bpe":
            family = "roberta"  # byte-level BPE files without a BPE family in config.json: RoBERTa's
    else:
        raise CheckpointError("no tokenizer found (need tokenizer.json, vocab.txt, or vocab.json + merges.txt)",
                              path=str(path), fix="copy the tokenizer files next to config.json")
    pad_token = tok_config.get("pad_token") if isinstance(tok_config.get("pad_token"), str) else None
    pad_id = None
    for candidate in (pad_token, "[PAD]", "<pad>"):
        if candidate and backend.token_to_id(candidate) is not None:
            pad_id = backend.token_to_id(candidate)
            break
    return Tokenizer(backend=backend, family=family, kind=kind, pad_token_id=pad_id if pad_id is not None else 0,
                     source=str(path))
