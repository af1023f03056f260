"""Masked-LM corpus features: the document mask (attention never crosses documents in a packed block), the
token-stream cache, and tokenizers trained on the corpus for from-scratch runs."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import nanoft
from nanoft.data.packing import document_grid, pack
from nanoft.train.pretrain import PretrainConfig, build_pretraining

TOL = dict(atol=1e-5, rtol=1e-5)
FAMILIES = ("bert", "roberta", "distilbert")


# ------------------------------------------------------------------ document mask
def packed_rows(doc_lengths, width, pad_id, seed=0):
    """Rows of documents laid end to end (random ids, never the pad id), right-padded to `width`:
    (ids, attention mask, document ids, [(row, start, end) of every document])."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(doc_lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    docs = torch.full_like(ids, -1)
    spans, doc = [], 0
    for row, lengths in enumerate(doc_lengths):
        start = 0
        for n in lengths:
            ids[row, start:start + n] = torch.randint(3, 120, (n,), generator=g)
            mask[row, start:start + n] = 1
            docs[row, start:start + n] = doc
            spans.append((row, start, start + n))
            start, doc = start + n, doc + 1
    return ids, mask, docs, spans


@pytest.mark.parametrize("family", FAMILIES)
def test_document_mask_equals_each_document_alone(family, tiny_checkpoints, hf_model_factory):
    """Every document of a packed block, under the document mask, gets the hidden states and MLM logits that
    `transformers` gives the document run alone; without the mask they differ (attention crosses documents)."""
    hf = hf_model_factory(family, "masked-lm")
    ours = nanoft.load_model(tiny_checkpoints[(family, "masked-lm")], head="masked-lm").eval()
    encoder = nanoft.load_model(tiny_checkpoints[(family, "masked-lm")], head=None).eval()
    pad = 1 if family == "roberta" else 0
    # row 0: three whole documents; row 1: two and padding; row 2: one document filling the row
    ids, mask, docs, spans = packed_rows([[5, 7, 4], [10, 3], [16]], 16, pad)
    real = torch.nonzero(mask.reshape(-1)).squeeze(1)
    with torch.no_grad():
        hidden = encoder(ids, attention_mask=mask, document_ids=docs)  # (B, T, hidden)
        logits = ours(ids, attention_mask=mask, masked_positions=real, document_ids=docs)  # (real, vocab)
        crossing = ours(ids, attention_mask=mask, masked_positions=real)
        logits_grid = torch.zeros(*ids.shape, logits.shape[-1])
        logits_grid.view(-1, logits.shape[-1])[real] = logits
        for row, start, end in spans:
            alone = ids[row:row + 1, start:end]
            out = hf(input_ids=alone, output_hidden_states=True)
            assert_close(hidden[row, start:end], out.hidden_states[-1][0], **TOL)
            assert_close(logits_grid[row, start:end], out.logits[0], **TOL)
    assert (crossing - logits).abs().max() > 1e-3  # the mask changes something: documents did see each other


def test_document_mask_gradients_stay_within_documents(tiny_checkpoints):
    """The loss of one document has no gradient with respect to another document's embeddings."""
    model = nanoft.load_model(tiny_checkpoints[("bert", "base")], head=None).double().eval()
    ids, mask, docs, spans = packed_rows([[6, 5, 5]], 16, 0, seed=3)
    embeddings = model.encoder.embeddings
    captured = {}
    handle = embeddings.word.register_forward_hook(lambda m, i, o: captured.setdefault("x", o.retain_grad() or o))
    hidden = model(ids, attention_mask=mask, document_ids=docs)
    handle.remove()
    hidden[0, 6:11].sum().backward()  # the second document only
    grad = captured["x"].grad  # packed rows (total_tokens, hidden): tokens in order
    assert grad[6:11].abs().sum() > 0
    assert grad[:6].abs().max() == 0 and grad[11:].abs().max() == 0


def test_packed_document_ids_follow_the_documents(minilm_dir):
    tok = nanoft.load_tokenizer(minilm_dir)
    docs = ["the cat sat", "a dog ran towards the river bank quickly", "money", "extraordinary photosynthesis"]
    data = pack(tok, docs, 8, use_cache=False)
    lengths = [len(x) for x in tok.encode_batch(docs, max_length=None)[0]]
    assert np.array_equal(data.document_ids, np.repeat(np.arange(len(docs)), lengths))
    grid = document_grid(data, [1, len(data) - 1], 8)
    assert np.array_equal(grid[0], data.documents_of(1))
    last = data.documents_of(len(data) - 1)
    assert np.array_equal(grid[1, :len(last)], last) and (grid[1, len(last):] == -1).all()


# ------------------------------------------------------------------ token-stream cache
class CountingTokenizer:
    """A tokenizer that counts the texts its backend encodes (the packer's only way to tokenize)."""

    def __init__(self, tokenizer):
        self.inner, self.fingerprint, self.texts = tokenizer, tokenizer.fingerprint, 0

    @property
    def backend(self):
        return self

    def no_truncation(self):
        self.inner.backend.no_truncation()

    def encode_batch(self, inputs, add_special_tokens=True):
        self.texts += len(inputs)
        return self.inner.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)


def test_stream_cache_is_read_back_and_invalidated(minilm_dir, tmp_path):
    tok = nanoft.load_tokenizer(minilm_dir)
    docs = ["the cat sat on the mat", "a dog ran towards the river bank", "money and photosynthesis"] * 5
    fresh = pack(tok, docs, 8, use_cache=False)
    counting = CountingTokenizer(tok)
    first = pack(counting, docs, 8, cache_dir=tmp_path)
    assert not first.from_cache and counting.texts == len(docs)
    again = pack(counting, docs, 16, cache_dir=tmp_path)  # another block size reuses the entry
    assert again.from_cache and counting.texts == len(docs)  # the tokenizer was not called
    for name in ("input_ids", "special", "word_ids", "document_ids"):
        assert np.array_equal(getattr(again, name), getattr(fresh, name)), name
    assert np.array_equal(again.offsets, np.append(np.arange(0, len(fresh.input_ids), 16), len(fresh.input_ids)))
    changed = pack(counting, docs[:-1] + ["money and photosynthesis!"], 8, cache_dir=tmp_path)
    assert not changed.from_cache and counting.texts == 2 * len(docs)
    for path in (tmp_path / "packed").glob("*.npz"):  # a truncated entry is rebuilt, never trusted
        path.write_bytes(path.read_bytes()[:100])
    rebuilt = pack(counting, docs, 8, cache_dir=tmp_path)
    assert not rebuilt.from_cache and np.array_equal(rebuilt.input_ids, fresh.input_ids)


def test_changed_corpus_file_invalidates_the_cache(tiny_task, tmp_path, monkeypatch):
    from nanoft.train.mlm import MaskedLM

    monkeypatch.setenv("NANOFT_CACHE_DIR", str(tmp_path / "cache"))  # this test's own cache: other tests pack this corpus too

    corpus = write_corpus(tmp_path / "corpus.txt", tiny_words(tiny_task))
    config = pretrain_config(tiny_task, tmp_path, text_file=str(corpus)).validate()
    tok = nanoft.load_tokenizer(tiny_task["model"])

    def load():
        train, held_out = MaskedLM().load_data(config, tok)
        return train, held_out["dev"]

    assert not any(d.from_cache for d in load())
    train, dev = load()
    assert train.from_cache and dev.from_cache
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("good movie\n")
    train, dev = load()
    assert not train.from_cache and train.documents + dev.documents == 121


# ------------------------------------------------------------------ runs
TINY_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_words(tiny_task):
    return [w for w in (tiny_task["model"] / "vocab.txt").read_text().split() if w not in TINY_SPECIALS]


def write_corpus(path, words, n=120, seed=0):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pretrain_config(tiny_task, tmp_path, **overrides):
    values = dict(text_file=str(write_corpus(tmp_path / "corpus.txt", tiny_words(tiny_task))),
                  model=str(tiny_task["model"]), max_length=16, batch_size=8, max_steps=4, lr=3e-3, eval_every=2,
                  output=str(tmp_path / "run"), quiet=True, log_every=1, seed=0, precision="fp32")
    values.update(overrides)
    return PretrainConfig(**values)


def test_pretraining_with_the_document_mask(tiny_task, tmp_path):
    """A run with --document-mask trains, and `nanoft eval --objective mlm --document-mask` on its held-out file
    reproduces the perplexity it recorded (the same documents, the same fixed mask)."""
    from nanoft.train.pretrain import evaluate_text

    dev = write_corpus(tmp_path / "dev.txt", tiny_words(tiny_task), n=20, seed=1)
    trainer = build_pretraining(pretrain_config(tiny_task, tmp_path, document_mask=True, dev_file=str(dev)),
                                progress=False)
    batch = trainer.objective.collate(trainer.train_data, [0, 1], 0, None)
    assert batch["document_ids"].shape == batch["input_ids"].shape
    results = trainer.fit()
    again = evaluate_text(str(trainer.run_dir), str(dev), max_length=16, device="cpu", document_mask=True)
    assert again["perplexity"] == pytest.approx(results["best"]["metrics"]["dev"]["perplexity"], rel=1e-5)
    crossing = evaluate_text(str(trainer.run_dir), str(dev), max_length=16, device="cpu")
    assert crossing["loss"] != pytest.approx(again["loss"], rel=1e-6)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_trained_tokenizer_is_saved_with_the_run(family, tiny_task, tmp_path):
    """--train-tokenizer: the family's special tokens (mask included), exact round trips on the corpus, the
    model's vocabulary sized to it, and best/ + checkpoint/ that reload in nanoft and `transformers`."""
    import transformers as tf

    from nanoft.weights.vocab import SPECIALS

    config = pretrain_config(tiny_task, tmp_path, from_scratch=True, family=family, train_tokenizer=300,
                             hidden_size=16, num_layers=1, num_heads=2, max_steps=2, eval_every=2)
    trainer = build_pretraining(config, progress=False)
    tok = trainer.tokenizer
    kind = "wordpiece" if family == "bert" else "bpe"
    specials = [tok.token_to_id(t) for t in SPECIALS[kind]]
    assert specials == [0, 1, 2, 3, 4] and tok.pad_token_id == (0 if family == "bert" else 1)
    assert trainer.objective.masker.mask_id == 4
    docs = [line for line in (tmp_path / "corpus.txt").read_text().splitlines() if line.strip()]
    ids, _ = tok.encode_batch(docs, max_length=None)
    assert [tok.decode(x) for x in ids] == docs
    cls, sep = (2, 3) if family == "bert" else (0, 2)
    unk = tok.token_to_id("[UNK]" if family == "bert" else "<unk>")
    assert all(x[0] == cls and x[-1] == sep and unk not in x for x in ids)  # no unknown token
    assert trainer.model.config.vocab_size == tok.vocab_size <= 300 + 30
    trainer.fit()
    for folder in (trainer.run_dir.best, trainer.run_dir.checkpoint):
        again = nanoft.load_tokenizer(folder)
        assert again.encode_batch(docs, max_length=None)[0] == ids
        hf_tok = tf.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        assert hf_tok(docs[:5])["input_ids"] == ids[:5]
    best = trainer.run_dir.best
    ours = nanoft.load_model(best, head="masked-lm").eval()
    hf = tf.AutoModelForMaskedLM.from_pretrained(best).eval()
    batch = torch.tensor([ids[0][:10]])
    with torch.no_grad():
        assert_close(ours(batch), hf(input_ids=batch).logits, **TOL)


def test_train_tokenizer_needs_from_scratch(tiny_task, tmp_path):
    from nanoft.errors import ConfigError

    with pytest.raises(ConfigError, match="--from-scratch"):
        pretrain_config(tiny_task, tmp_path, train_tokenizer=300).validate()
    with pytest.raises(ConfigError, match="too small"):
        pretrain_config(tiny_task, tmp_path, train_tokenizer=100, from_scratch=True, family="roberta").validate()


def test_resumed_run_keeps_its_trained_tokenizer(tiny_task, tmp_path):
    config = pretrain_config(tiny_task, tmp_path, from_scratch=True, train_tokenizer=300, hidden_size=16,
                             num_layers=1, num_heads=2, max_steps=2, eval_every=2)
    first = build_pretraining(config, progress=False)
    assert first.fit(stop_at_step=1) == {"stopped_at": 1}
    resumed = build_pretraining(config.replace(resume=True), progress=False)
    assert resumed.tokenizer.source == str(first.run_dir.checkpoint)  # read back, not trained again
    assert resumed.tokenizer.backend.get_vocab() == first.tokenizer.backend.get_vocab()
    resumed.fit()


# ------------------------------------------------------------------ several tasks, step exports
def test_corpus_of_several_tasks_keeps_each_task_and_its_pairs(minilm_dir, data_dir):
    """--task cola,rte: the documents are CoLA's then RTE's, RTE's pairs stay pairs, and the packed stream is
    exactly each task tokenized on its own, laid end to end (nothing lost, nothing joined differently)."""
    from nanoft.data.packing import tokenize_stream
    from nanoft.tasks import get_task
    from nanoft.train.corpus import load_corpus

    config = PretrainConfig(task="cola,rte", data_dir=str(data_dir), model=str(minilm_dir)).validate()
    (texts, pairs), (dev, dev_pairs), name = load_corpus(config)
    cola, rte = (get_task(n).load(str(data_dir), "train") for n in ("cola", "rte"))
    assert name == "cola+rte" and texts == cola.texts + rte.texts
    assert pairs == [None] * len(cola.texts) + rte.text_pairs
    assert len(dev) == len(get_task("cola").load(str(data_dir), "dev").texts) + 277 and dev_pairs[-1] is not None
    tok = nanoft.load_tokenizer(minilm_dir)
    ids, special, _ = tokenize_stream(tok, texts, pairs)
    alone = [tokenize_stream(tok, cola.texts)[0], tokenize_stream(tok, rte.texts, rte.text_pairs)[0]]
    assert np.array_equal(ids, np.concatenate(alone))
    assert special.sum() == 2 * len(cola.texts) + 3 * len(rte.texts)  # [CLS] a [SEP] / [CLS] a [SEP] b [SEP]


@pytest.mark.parametrize("task, match", [("cola,nope", "unknown task 'nope'"), ("cola,,rte", "distinct task names"),
                                         ("cola,cola", "distinct task names")])
def test_bad_task_list_is_refused(task, match, data_dir):
    from nanoft.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        PretrainConfig(task=task, data_dir=str(data_dir)).validate()


def test_export_every_keeps_the_model_at_each_step(tiny_task, tmp_path):
    """--export-every 2: RUN/step-2/ holds the weights a run paused at step 2 had (the same seed, the same
    schedule), RUN/step-4/ the final weights; both load in transformers with nanoft's logits."""
    import transformers as tf

    trainer = build_pretraining(pretrain_config(tiny_task, tmp_path, export_every=2), progress=False)
    trainer.fit()
    paused = build_pretraining(pretrain_config(tiny_task, tmp_path, output=str(tmp_path / "paused")), progress=False)
    assert paused.fit(stop_at_step=2) == {"stopped_at": 2}
    at_two, at_four = (nanoft.load_model(trainer.run_dir.step_export(step), head="masked-lm").state_dict()
                       for step in (2, 4))
    ours_two, ours_final = paused.model.state_dict(), trainer.model.state_dict()
    assert set(at_two) == set(ours_two) and len(at_two) > 10
    assert all(torch.equal(at_two[k], ours_two[k]) for k in at_two)
    assert all(torch.equal(at_four[k], ours_final[k]) for k in at_four)
    assert any(not torch.equal(at_two[k], at_four[k]) for k in at_two)
    at_zero = nanoft.load_model(trainer.run_dir.step_export(0), head="masked-lm").state_dict()
    start = build_pretraining(pretrain_config(tiny_task, tmp_path, output=str(tmp_path / "start")), progress=False)
    assert all(torch.equal(at_zero[k], v) for k, v in start.model.state_dict().items())  # before any step
    batch = torch.tensor([[2, 7, 9, 11, 3]])
    for step in (2, 4):
        folder = trainer.run_dir.step_export(step)
        hf = tf.AutoModelForMaskedLM.from_pretrained(folder).eval()
        with torch.no_grad():
            assert_close(nanoft.load_model(folder, head="masked-lm").eval()(batch), hf(input_ids=batch).logits,
                         **TOL)
    assert not (tmp_path / "paused" / "step-2").exists()  # no exports unless asked
