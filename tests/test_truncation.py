"""Truncation strategies for single texts longer than max_length (head, tail, head+tail).

References are the Hugging Face tokenizers: `truncation_side="left"` for tail, and for head+tail the
text's own tokens (no special tokens) cut by hand and wrapped in the family's special token ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import nanoft
from nanoft.errors import ConfigError
from nanoft.weights import Truncation

LONG = ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
        "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals, when it "
        "was checked by a violent gust of wind which swept up the streets.",
        "good " * 40 + "bad " * 40 + "fine"]
SHORT = ["short one", "", "a b c"]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    """A tiny byte-level BPE (RoBERTa style) trained here, saved as vocab.json + merges.txt."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(LONG * 20 + SHORT, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    d = tmp_path_factory.mktemp("bpe")
    tok.save_model(str(d))
    (d / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    return d


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tokenizers(request, minilm_dir, bpe_dir):
    """(ours, the transformers tokenizer, (first special id, last special id)) of one family."""
    import transformers as tf

    if request.param == "bert":
        ours, hf = nanoft.load_tokenizer(minilm_dir), tf.AutoTokenizer.from_pretrained(minilm_dir)
    else:
        ours, hf = nanoft.load_tokenizer(bpe_dir), tf.RobertaTokenizerFast.from_pretrained(bpe_dir)
    assert ours.family == request.param
    return ours, hf, (hf.cls_token_id, hf.sep_token_id)


def _by_hand(hf, specials, text: str, max_length: int, head: int):
    """[first special] + the text's first `head` tokens + its last (max_length - head - 2) + [last special]."""
    content = hf(text, add_special_tokens=False)["input_ids"]
    tail = max_length - head - 2
    if len(content) <= max_length - 2:
        return [specials[0]] + content + [specials[1]]
    return [specials[0]] + content[:head] + content[len(content) - tail:] + [specials[1]]


@pytest.mark.parametrize("max_length,head", [(8, 3), (10, 0), (12, 9), (7, 5)])
def test_head_tail_keeps_the_first_h_and_the_last_tokens(tokenizers, max_length, head):
    ours, hf, specials = tokenizers
    ids, types = ours.encode_batch(LONG, max_length=max_length, truncation=Truncation("head+tail", head))
    for text, got, got_types in zip(LONG, ids, types):
        content = hf(text, add_special_tokens=False)["input_ids"]
        assert len(content) > max_length  # every LONG text is really cut
        assert got == _by_hand(hf, specials, text, max_length, head)
        assert len(got) == max_length and got[0] == specials[0] and got[-1] == specials[1]
        assert got_types == [0] * max_length


def test_tail_keeps_the_last_tokens(tokenizers):
    ours, hf, specials = tokenizers
    ids, _ = ours.encode_batch(LONG, max_length=9, truncation=Truncation("tail"))
    hf.truncation_side = "left"
    try:
        assert ids == hf(LONG, truncation=True, max_length=9)["input_ids"]
    finally:
        hf.truncation_side = "right"
    for text, got in zip(LONG, ids):  # and by hand: no head at all
        assert got == _by_hand(hf, specials, text, 9, 0)


def test_head_is_todays_cut(tokenizers):
    ours, hf, _ = tokenizers
    for truncation in (None, Truncation("head"), Truncation("head", 3)):
        ids, _ = ours.encode_batch(LONG, max_length=9, truncation=truncation)
        assert ids == hf(LONG, truncation=True, max_length=9)["input_ids"]


@pytest.mark.parametrize("strategy", ["head", "tail", "head+tail"])
def test_a_text_that_fits_is_unchanged(tokenizers, strategy):
    ours, hf, _ = tokenizers
    whole = hf(SHORT + LONG)["input_ids"]
    fits = max(len(x) for x in whole)  # exactly the longest text's length: nothing is cut
    ids, types = ours.encode_batch(SHORT + LONG, max_length=fits, truncation=Truncation(strategy, 2))
    assert ids == whole
    ids, _ = ours.encode_batch(SHORT, max_length=12, truncation=Truncation(strategy, 2))
    assert ids == hf(SHORT)["input_ids"]


@pytest.mark.parametrize("strategy", ["tail", "head+tail"])
def test_pairs_keep_the_longest_first_rule(tokenizers, strategy):
    ours, hf, _ = tokenizers
    firsts, seconds = LONG, SHORT[:1] + LONG[:2]
    ids, types = ours.encode_batch(firsts, seconds, max_length=14, truncation=Truncation(strategy, 3))
    ref = hf(firsts, seconds, truncation="longest_first", max_length=14)
    assert ids == ref["input_ids"]
    if ours.family == "bert":
        assert types == ref["token_type_ids"]


def test_head_tail_on_real_imdb_reviews_at_512(minilm_dir, data_dir):
    """The preset's setting (128 + 382 of 512) on the IMDB dev reviews longer than 512 tokens."""
    import transformers as tf

    from nanoft.tasks import get_task

    texts = get_task("imdb").load(data_dir, "dev").texts
    ours, hf = nanoft.load_tokenizer(minilm_dir), tf.AutoTokenizer.from_pretrained(minilm_dir)
    long = [t for t in texts if len(hf(t)["input_ids"]) > 512]
    assert len(long) >= 5
    ids, _ = ours.encode_batch(long, max_length=512, truncation=Truncation("head+tail", 128))
    for text, got in zip(long, ids):
        assert got == _by_hand(hf, (hf.cls_token_id, hf.sep_token_id), text, 512, 128)


def test_bad_settings_are_config_errors():
    from nanoft.train.config import TrainConfig

    with pytest.raises(ConfigError, match="unknown truncation"):
        Truncation("middle")
    with pytest.raises(ConfigError, match="must be an int"):
        Truncation("head+tail", -1)
    with pytest.raises(ConfigError, match="must be below max_length"):
        TrainConfig(task="sst2", truncation="head+tail", truncation_head_tokens=128, max_length=128).validate()
    with pytest.raises(ConfigError, match="unknown truncation"):
        TrainConfig(task="sst2", truncation="both").validate()
    TrainConfig(task="sst2", truncation="head+tail", truncation_head_tokens=64, max_length=128).validate()
    # a head is only checked against max_length for head+tail
    TrainConfig(task="sst2", truncation="tail", truncation_head_tokens=500, max_length=128).validate()


# ------------------------------------------------------------------ the encoding cache
def test_the_cache_keeps_strategies_apart(minilm_dir, tmp_path):
    from nanoft.data import encode
    from nanoft.tasks import Examples

    examples = Examples(texts=LONG, text_pairs=None, labels=None, lines=np.arange(2, 5), source="by hand",
                        fingerprint="")
    tok = nanoft.load_tokenizer(minilm_dir)
    cache = tmp_path / "cache"
    head = encode(examples, tok, 10, cache)
    head_tail = encode(examples, tok, 10, cache, truncation=Truncation("head+tail", 4))
    assert not head_tail.from_cache and head_tail.key != head.key  # not served the head ids
    assert [list(head_tail.ids(i)) for i in range(3)] == tok.encode_batch(LONG, max_length=10,
                                                                          truncation=Truncation("head+tail", 4))[0]
    assert [list(head.ids(i)) for i in range(3)] != [list(head_tail.ids(i)) for i in range(3)]
    other_split = encode(examples, tok, 10, cache, truncation=Truncation("head+tail", 5))
    tail = encode(examples, tok, 10, cache, truncation=Truncation("tail"))
    assert len({head.key, head_tail.key, other_split.key, tail.key}) == 4
    assert not other_split.from_cache and not tail.from_cache
    # the same strategy again is served from the cache; head_tokens means nothing to tail
    again = encode(examples, tok, 10, cache, truncation=Truncation("head+tail", 4))
    assert again.from_cache and again.key == head_tail.key
    assert np.array_equal(again.input_ids, head_tail.input_ids)
    assert encode(examples, tok, 10, cache, truncation=Truncation("tail", 7)).from_cache
    assert encode(examples, tok, 10, cache, truncation=Truncation("head")).key == head.key


# ------------------------------------------------------------------ training and predict use the run's strategy
def _cut_by_hand(tok, text: str, max_length: int, head: int):
    """The whole text encoded (no truncation), then [CLS] + first `head` + last (rest) + [SEP] by slicing."""
    whole, _ = tok.encode(text, max_length=None)
    content = whole[1:-1]
    if len(whole) <= max_length:
        return whole
    return whole[:1] + content[:head] + content[len(content) - (max_length - head - 2):] + whole[-1:]


def test_training_and_predict_use_the_runs_strategy(tiny_config, tiny_task, tmp_path):
    """A short head+tail run: its train/dev ids, its config.toml, and `nanoft predict` on long texts all
    follow head+tail (predict's probabilities equal the model run by hand on head+tail ids)."""
    from click.testing import CliRunner

    from nanoft.cli import cli
    from nanoft.train import Trainer
    from nanoft.train.config import read_toml
    from nanoft.train.rundir import RunDir
    from nanoft.weights import load_model

    max_length, head = 10, 3
    trainer = Trainer(tiny_config(max_length=max_length, truncation="head+tail", truncation_head_tokens=head,
                                  max_steps=2))
    tok = trainer.tokenizer
    for data, split in ((trainer.train_data, "train"), (trainer.eval_data["dev"], "dev")):
        texts = (tiny_task["data"] / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        texts = [line.split("\t")[0] for line in texts]
        assert len(data) == len(texts)
        assert sum(len(tok.encode(t, max_length=None)[0]) > max_length for t in texts) > 10  # many are cut
        for i, text in enumerate(texts):
            assert list(data.ids(i)) == _cut_by_hand(tok, text, max_length, head)
    trainer.fit()
    run = Path(tiny_config().output)
    recorded = read_toml(run / "config.toml")
    assert recorded["truncation"] == "head+tail" and recorded["truncation_head_tokens"] == head

    # predict on reviews longer than max_length: the run's head+tail, not today's head
    # (the tiny task's label is "has a positive word": its verdict words sit at the end, where only the tail sees them)
    fillers = ["the", "movie", "was", "plot", "acting", "very", "not", "really", "film", "story"]
    texts = [" ".join(np.random.default_rng(seed).choice(fillers, 25)) + end
             for seed, end in enumerate([" bad awful poor", " good great fine", " so bad", " a great film"])]
    (tmp_path / "in.tsv").write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["predict", str(run), "--input", str(tmp_path / "in.tsv"),
                                      "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    got = torch.tensor([[r[k] for k in sorted(r) if k.startswith("p_")] for r in rows])  # (texts, classes)

    model = load_model(RunDir(run).model_dir(), head="classification").eval()

    def probs(cut):
        with torch.no_grad():
            return torch.cat([torch.softmax(model(torch.tensor([cut(t)])), dim=-1) for t in texts])

    by_hand = probs(lambda t: _cut_by_hand(tok, t, max_length, head))
    head_only = probs(lambda t: tok.encode(t, max_length=max_length)[0])
    # predict writes probabilities rounded to 6 decimals; a 2-step tiny model's outputs move little with the
    # input, but cutting only the head moves them by more than 10x that tolerance, so it would fail here
    torch.testing.assert_close(got, by_hand, rtol=0, atol=1e-6)
    assert (head_only - by_hand).abs().max() > 1e-5


# ------------------------------------------------------------------ the IMDB long-document preset
PRESET = Path(__file__).resolve().parents[1] / "experiments" / "imdb-long.toml"
KINDS = {"full-512": None, "full-512-head-tail": None, "longformer-2048": "longformer", "bigbird-2048": "bigbird",
         "linformer-2048": "linformer", "linformer-2048-adaptive": "linformer", "performer-2048": "performer"}


def test_imdb_long_preset_plans_every_kind_with_three_seeds_and_both_truncations(tmp_path):
    from nanoft.experiment import plan

    root, runs = plan(str(PRESET), output_root=str(tmp_path))
    assert [(r["name"], r["seed"]) for r in runs] == [(f"imdb/{k}", s) for k in KINDS for s in (1, 2, 3)]
    for r in runs:
        c = r["config"].validate()
        kind = r["name"].split("/")[1]
        assert c.task == "imdb" and c.seed == r["seed"] and c.attention == KINDS[kind]
        assert r["output"] == tmp_path / "imdb" / kind / f"seed{r['seed']}"
        # one recipe for every kind; memory bounded the same way (gradient checkpointing, no token cap)
        assert (c.epochs, c.lr, c.batch_size, c.attention_dropout) == (2, 1e-4, 16, 0.0)
        assert c.gradient_checkpointing and c.max_tokens is None
        assert c.max_length == (512 if kind.startswith("full") else 2048)
        if kind.startswith("linformer"):  # the fix differs from learned k = 256 in the projection alone
            assert c.attention_options == {"k": 256, **({"projection": "adaptive"} if kind.endswith("adaptive") else {})}
        expected = ("head+tail", 128) if kind == "full-512-head-tail" else ("head", None)
        assert Truncation.from_config(c).key() == list(expected)


@pytest.mark.parametrize("only", list(KINDS))
def test_imdb_long_preset_only_one_kind_one_seed(only, tmp_path):
    """`nanoft run experiments/imdb-long.toml --only X --seeds 1` plans exactly that run."""
    from nanoft.experiment import plan

    _, runs = plan(str(PRESET), only=[only], seeds=[1], output_root=str(tmp_path))
    assert len(runs) == 1 and runs[0]["name"] == f"imdb/{only}" and runs[0]["seed"] == 1
    assert runs[0]["config"].seed == 1 and runs[0]["output"] == tmp_path / "imdb" / only / "seed1"
    if only == "full-512-head-tail":  # the first 128 and the last 382 of 512 tokens
        assert (runs[0]["config"].truncation, runs[0]["config"].truncation_head_tokens) == ("head+tail", 128)
