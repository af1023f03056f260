"""Masked-LM pretraining: loss parity with `transformers`, the masked-positions-only head, mask statistics,
packing, exact resume, the saved checkpoint in `transformers`, and bad input as one line."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import nanoft
from nanoft.data.masking import EVAL_STREAM, IGNORE, Masker, label_grid
from nanoft.data.packing import pack
from nanoft.errors import NanoftError
from nanoft.train.mlm import mlm_loss
from nanoft.train.pretrain import PretrainConfig, build_pretraining

TOL = dict(atol=1e-5, rtol=1e-5)
FAMILIES = ("bert", "roberta", "distilbert")


def random_masked_batch(family, seed=0):
    """A padded batch with ~20% of its real tokens to predict: (ids, attention mask, labels `(B, T)`)."""
    g = torch.Generator().manual_seed(seed)
    pad = 1 if family == "roberta" else 0
    lengths = [12, 7, 3, 10]
    ids = torch.full((4, 12), pad, dtype=torch.long)
    mask = torch.zeros(4, 12, dtype=torch.long)
    labels = torch.full((4, 12), IGNORE, dtype=torch.long)
    for i, n in enumerate(lengths):
        row = torch.randint(3, 120, (n,), generator=g)
        ids[i, :n], mask[i, :n] = row, 1
        chosen = torch.rand(n, generator=g) < 0.2
        chosen[n // 2] = True  # at least one per row
        labels[i, :n][chosen] = torch.randint(3, 120, (int(chosen.sum()),), generator=g)
    return ids, mask, labels


def flat_targets(labels):
    flat = labels.reshape(-1)
    positions = torch.nonzero(flat != IGNORE).squeeze(1)
    return positions, flat[positions]


@pytest.mark.parametrize("family", FAMILIES)
def test_mlm_loss_equals_transformers(family, tiny_checkpoints, hf_model_factory):
    """Our loss (projection only at masked positions) equals XForMaskedLM's loss on the same batch and labels."""
    hf = hf_model_factory(family, "masked-lm")
    ours = nanoft.load_model(tiny_checkpoints[(family, "masked-lm")], head="masked-lm")
    ids, mask, labels = random_masked_batch(family)
    positions, targets = flat_targets(labels)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
        logits = ours(ids, attention_mask=mask, masked_positions=positions)
    assert logits.shape == (len(positions), 120)
    assert_close(mlm_loss(logits, targets), expected, **TOL)


def test_mlm_loss_equals_transformers_minilm(minilm_dir, tmp_path):
    """The real MiniLM: our masked-LM loss equals BertForMaskedLM's on a masked sentence batch. The checkpoint
    ships no MLM head, so transformers initialises one and both models use that (saved by transformers)."""
    import transformers as tf

    hf = tf.BertForMaskedLM.from_pretrained(minilm_dir).eval()
    hf.save_pretrained(tmp_path / "minilm-mlm", safe_serialization=True)
    ours = nanoft.load_model(tmp_path / "minilm-mlm", head="masked-lm")
    tok = nanoft.load_tokenizer(minilm_dir)
    data = pack(tok, ["the cat sat on the mat and looked at the dog", "a second document, a little longer"] * 4, 24)
    batch = Masker.for_tokenizer(tok, 0.15, False, 3).collate(data, list(range(len(data))), tok.pad_token_id, None, 0)
    with torch.no_grad():
        expected = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], labels=label_grid(batch)).loss
        logits = ours(batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], masked_positions=batch["masked_positions"])
    assert_close(mlm_loss(logits, batch["mlm_labels"]), expected, **TOL)


def test_masked_positions_head_matches_full_projection(tiny_checkpoints):
    """Gathering the masked positions before the head gives the loss and every gradient of projecting
    all positions and ignoring the unmasked ones."""
    ids, mask, labels = random_masked_batch("bert", seed=1)
    positions, targets = flat_targets(labels)
    grads = []
    for gather in (True, False):
        model = nanoft.load_model(tiny_checkpoints[("bert", "masked-lm")], head="masked-lm").double()
        if gather:
            loss = F.cross_entropy(model(ids, attention_mask=mask, masked_positions=positions), targets)
        else:
            full = model(ids, attention_mask=mask)  # (B, T, vocab)
            loss = F.cross_entropy(full.reshape(-1, full.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, ga), (loss_b, gb) = grads
    assert_close(loss_a, loss_b, atol=1e-10, rtol=1e-10)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert_close(ga[name], gb[name], atol=1e-10, rtol=1e-8, msg=name)


# ------------------------------------------------------------------ masking and packing
WORDS = ("the cat sat on mat unbelievable tokenization interchangeable dog ran quickly towards "
         "extraordinary photosynthesis a of and river bank money").split()


def corpus(n_docs, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def minilm_tok(minilm_dir):
    return nanoft.load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def big_packed(minilm_tok):
    data = pack(minilm_tok, corpus(9000), 128)
    assert len(data.input_ids) >= 200_000
    return data


def mask_all(data, masker, stream=0):
    """(inputs, labels) of every block, concatenated."""
    pairs = [masker.mask(data.ids(i), data.special_of(i), data.words_of(i) if masker.whole_word else None, stream, i)
             for i in range(len(data))]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


@pytest.mark.parametrize("rate,whole_word", [(0.15, False), (0.15, True), (0.3, False)])
def test_masking_statistics(big_packed, minilm_tok, rate, whole_word):
    masker = Masker.for_tokenizer(minilm_tok, rate, whole_word, seed=7)
    inputs, labels = mask_all(big_packed, masker)
    chosen = labels != IGNORE
    special = big_packed.special
    assert not chosen[special].any(), "a special token was masked"
    assert abs(chosen.sum() / (~special).sum() - rate) < 0.005
    shown = inputs[chosen]
    original = big_packed.input_ids[chosen]
    assert (labels[chosen] == original).all()
    as_mask = (shown == masker.mask_id).mean()
    kept = (shown == original).mean()
    randomised = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(randomised - 0.1) < 0.01
    assert not np.isin(shown[(shown != masker.mask_id) & (shown != original)], [0, 100, 101, 102, 103]).any()
    if whole_word:  # within each block every word is masked whole or not at all
        for i in range(len(big_packed)):
            lo, hi = big_packed.offsets[i], big_packed.offsets[i + 1]
            words, block_chosen = big_packed.word_ids[lo:hi], chosen[lo:hi]
            for w in np.unique(words[words >= 0]):
                picked = block_chosen[words == w]
                assert picked.all() or not picked.any(), f"word {w} split in block {i}"
        assert (np.bincount(big_packed.word_ids[big_packed.word_ids >= 0]) > 1).sum() > 1000  # many multi-piece words


def test_masks_are_seeded_by_seed_epoch_and_index(big_packed, minilm_tok):
    masker = Masker.for_tokenizer(minilm_tok, 0.15, False, seed=3)
    a = masker.collate(big_packed, [5, 9, 2], minilm_tok.pad_token_id, None, stream=1)
    b = masker.collate(big_packed, [2, 5], minilm_tok.pad_token_id, None, stream=1)  # other batch, other order
    assert torch.equal(label_grid(a)[2], label_grid(b)[0]) and torch.equal(a["input_ids"][0], b["input_ids"][1])
    other_epoch = masker.collate(big_packed, [5, 9, 2], minilm_tok.pad_token_id, None, stream=2)
    assert not torch.equal(label_grid(a), label_grid(other_epoch))
    fixed = Masker.for_tokenizer(minilm_tok, 0.15, False, seed=0)
    e1 = fixed.collate(big_packed, [4], 0, None, EVAL_STREAM)
    e2 = Masker.for_tokenizer(minilm_tok, 0.15, False, seed=0).collate(big_packed, [4], 0, None, EVAL_STREAM)
    assert torch.equal(e1["input_ids"], e2["input_ids"]) and torch.equal(e1["mlm_labels"], e2["mlm_labels"])


def test_packing_loses_and_duplicates_no_token(minilm_tok):
    docs = corpus(300, seed=2)
    data = pack(minilm_tok, docs, 50)
    ids, _ = minilm_tok.encode_batch(docs, max_length=None)  # each document alone, [CLS] ... [SEP]
    stream = np.concatenate([np.asarray(x) for x in ids])
    blocks = [data.ids(i) for i in range(len(data))]
    assert np.array_equal(np.concatenate(blocks), stream)
    assert all(len(b) == 50 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 50
    assert data.special.sum() == 2 * len(docs)
    pairs = pack(minilm_tok, ["first part", "another"], 4, pairs=["second part", "pair"])
    want = minilm_tok.encode_batch(["first part", "another"], ["second part", "pair"], max_length=None)[0]
    assert np.array_equal(pairs.input_ids, np.concatenate([np.asarray(x) for x in want]))


# ------------------------------------------------------------------ runs
TINY_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_words(tiny_task):
    """The tiny model's vocabulary words (its vocab.txt without the special tokens)."""
    return [w for w in (tiny_task["model"] / "vocab.txt").read_text().split() if w not in TINY_SPECIALS]


def write_corpus(path, words, n=120, seed=0):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pretrain_config(tiny_task, tmp_path, **overrides):
    values = dict(text_file=str(write_corpus(tmp_path / "corpus.txt", tiny_words(tiny_task))), model=str(tiny_task["model"]),
                  max_length=16, batch_size=8, epochs=2, lr=3e-3, eval_every=4, output=str(tmp_path / "run"),
                  quiet=True, log_every=1, seed=0, precision="fp32", whole_word_mask=True)
    values.update(overrides)
    return PretrainConfig(**values)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pretraining_resumes_bit_for_bit(tiny_task, tmp_path):
    full = build_pretraining(pretrain_config(tiny_task, tmp_path, output=str(tmp_path / "full")), progress=False)
    results = full.fit()
    assert full.total_steps > full.steps_per_epoch  # crosses an epoch: new masks after the cut too
    cut = build_pretraining(pretrain_config(tiny_task, tmp_path, output=str(tmp_path / "cut")), progress=False)
    stop = full.steps_per_epoch - 1
    assert cut.fit(stop_at_step=stop) == {"stopped_at": stop}
    resumed = build_pretraining(pretrain_config(tiny_task, tmp_path, output=str(tmp_path / "cut"), resume=True),
                                progress=False)
    assert resumed.step == stop
    resumed.fit()
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert results["main_metric"] == "perplexity"
    dev = results["best"]["metrics"]["dev"]
    assert dev["perplexity"] == pytest.approx(np.exp(dev["loss"]))
    first_eval = next(json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
                      if "eval" in l)
    assert dev["loss"] <= first_eval["eval"]["dev"]["loss"]  # best = lowest perplexity


def test_saved_checkpoint_loads_in_transformers_and_fine_tunes(tiny_task, tmp_path, tiny_config):
    import transformers as tf

    dev = write_corpus(tmp_path / "dev.txt", tiny_words(tiny_task), n=20, seed=1)
    trainer = build_pretraining(pretrain_config(tiny_task, tmp_path, max_steps=4, eval_every=2, dev_file=str(dev)),
                                progress=False)
    results = trainer.fit()
    best = trainer.run_dir.best
    # `nanoft eval --objective mlm` on the same held-out file reproduces the run's recorded perplexity
    from nanoft.train.pretrain import evaluate_text

    again = evaluate_text(str(trainer.run_dir), str(dev), max_length=16, whole_word=True, device="cpu")
    assert again["perplexity"] == pytest.approx(results["best"]["metrics"]["dev"]["perplexity"], rel=1e-5)
    assert json.loads((best / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    hf = tf.BertForMaskedLM.from_pretrained(best).eval()
    ours = nanoft.load_model(best, head="masked-lm")
    ids = torch.tensor([[2, 7, 9, 4, 11, 3], [2, 8, 4, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert_close(ours(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask).logits, **TOL)
    assert (best / "tokenizer.json").is_file()
    from nanoft.train import Trainer

    results = Trainer(tiny_config(model=str(best), max_steps=3, output=str(tmp_path / "ft"))).fit()
    assert results["steps"] == 3 and results["best"] is not None


def run_cli(args, cwd):
    return subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_bad_input_is_one_line(tiny_task, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("good movie\n", encoding="utf-8")
    no_mask = tmp_path / "nomask"
    no_mask.mkdir()
    (no_mask / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "movie"]) + "\n")
    corpus_file = write_corpus(tmp_path / "corpus.txt", tiny_words(tiny_task))
    big = tmp_path / "vocab_big"  # a tokenizer with 10 more tokens than the tiny model's vocabulary
    big.mkdir()
    (big / "vocab.txt").write_text("\n".join(TINY_SPECIALS + tiny_words(tiny_task) + [f"extra{i}" for i in range(10)]))
    base = ["pretrain", "--quiet", "--output", str(tmp_path / "r"), "--max-steps", "1"]
    cases = [
        (["--text-file", str(empty), "--model", str(tiny_task["model"])], "empty"),
        (["--text-file", str(short), "--model", str(tiny_task["model"]), "--dev-file", str(short)],
         "fewer than one block"),
        (["--text-file", str(corpus_file), "--model", str(no_mask)], "no mask token"),
        (["--text-file", str(corpus_file), "--from-scratch", "--hidden-size", "30", "--num-heads", "4",
          "--model", str(tiny_task["model"])], "not divisible"),
        (["--text-file", str(corpus_file), "--from-scratch", "--config-json", str(tiny_task["model"] / "config.json"),
          "--model", str(big)], "vocabulary"),
    ]
    for args, message in cases:
        done = run_cli(base + args, tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, done.stderr)
    assert not (tmp_path / "r").exists()  # nothing half-written
