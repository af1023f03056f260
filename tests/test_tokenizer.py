"""Tokenizer ids equal the Hugging Face tokenizers' on the same texts and pairs."""
from __future__ import annotations

import json
import shutil

import pytest

import nanoft

TEXTS = ["Hello, world!", "it 's a charming and often affecting journey .", "Ünïcödé café — naïve résumé 日本語",
         "", "   spaced    out   ", "a " * 300]
PAIRS = ["The cat sat.", "a second sentence , with more words than the first one has", "x", "y", "z", "b " * 300]


def test_minilm_tokenizer_json_matches_hf(minilm_dir):
    import transformers as tf

    ours = nanoft.load_tokenizer(minilm_dir)
    hf = tf.AutoTokenizer.from_pretrained(minilm_dir)
    ids, types = ours.encode_batch(TEXTS, max_length=64)
    ref = hf(TEXTS, truncation=True, max_length=64)
    assert ids == ref["input_ids"] and types == ref["token_type_ids"]
    ids, types = ours.encode_batch(TEXTS, PAIRS, max_length=64)
    ref = hf(TEXTS, PAIRS, truncation="longest_first", max_length=64)
    assert ids == ref["input_ids"] and types == ref["token_type_ids"]
    assert ours.pad_token_id == 0 and ours.kind == "tokenizer.json"
    # the shipped preset (pad to 128) is switched off: no padding without truncation either
    assert len(ours.encode("short")[0]) == 3


def test_wordpiece_from_vocab_txt(minilm_dir, tmp_path):
    import transformers as tf

    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    ours = nanoft.load_tokenizer(tmp_path)
    assert ours.kind == "wordpiece"
    hf = tf.BertTokenizerFast.from_pretrained(tmp_path, do_lower_case=True)
    ids, types = ours.encode_batch(TEXTS, PAIRS, max_length=40)
    ref = hf(TEXTS, PAIRS, truncation="longest_first", max_length=40)
    assert ids == ref["input_ids"] and types == ref["token_type_ids"]


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory, data_dir):
    """A byte-level BPE (RoBERTa style) trained here on SST-2 dev text, saved as vocab.json + merges.txt."""
    from tokenizers import ByteLevelBPETokenizer

    lines = [l.split("\t")[0] for l in (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(lines, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    d = tmp_path_factory.mktemp("bpe")
    tok.save_model(str(d))
    (d / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    return d


def test_roberta_bpe_from_vocab_and_merges(bpe_files):
    import transformers as tf

    ours = nanoft.load_tokenizer(bpe_files)
    assert ours.kind == "bpe" and ours.family == "roberta" and ours.pad_token_id == 1
    hf = tf.RobertaTokenizerFast.from_pretrained(bpe_files)
    ids, types = ours.encode_batch(TEXTS, max_length=50)
    assert ids == hf(TEXTS, truncation=True, max_length=50)["input_ids"]
    ids, types = ours.encode_batch(TEXTS, PAIRS, max_length=50)
    assert ids == hf(TEXTS, PAIRS, truncation="longest_first", max_length=50)["input_ids"]
    assert all(set(t) == {0} for t in types)


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(nanoft.NanoftError, match="no tokenizer found"):
        nanoft.load_tokenizer(tmp_path)
