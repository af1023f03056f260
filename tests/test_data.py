"""Encoding cache, collate, samplers (bucketing, resume, sharding) and evaluation coverage."""
import logging
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

import nanoft
from nanoft.data import (BucketBatchSampler, EncodedDataset, EvalBatchSampler, RandomBatchSampler, batches, collate,
                         describe, encode, padding_waste)
from nanoft.errors import ConfigError, NanoftError
from nanoft.tasks import Examples, get_task


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("nanoft_cache")


@pytest.fixture(scope="module")
def sst2_train_lengths(data_dir, cache_dir):
    """Real token lengths of the whole SST-2 train set (MiniLM's BERT uncased WordPiece)."""
    return encode(get_task("sst2").load(data_dir, "train"), nanoft.load_tokenizer(), 128, cache_dir).lengths


@pytest.fixture(scope="module")
def sst2_dev(data_dir, cache_dir):
    return encode(get_task("sst2").load(data_dir, "dev"), nanoft.load_tokenizer(), 128, cache_dir)


def fake_dataset(lengths, labels=None):
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.arange(1, offsets[-1] + 1, dtype=np.int32)  # never the pad id 0
    return EncodedDataset(ids, np.ones(offsets[-1], dtype=np.int8), offsets,
                          None if labels is None else np.asarray(labels))


def flatten(sampler):
    return [i for batch in sampler for i in batch]


# -- padding waste on the real SST-2 train set (README: ~9.6x at 128, ~3x random) ---------------
def test_padding_waste_sst2_train(sst2_train_lengths):
    lengths = sst2_train_lengths
    assert len(lengths) == 67349 and lengths.sum() == pytest.approx(897_000, rel=0.01)
    assert padding_waste(lengths, 32, "bucket") <= 1.10
    assert 2.7 <= padding_waste(lengths, 32, "random") <= 3.3
    assert padding_waste(lengths, 32, "fixed:128") == pytest.approx(9.6, abs=0.05)
    assert padding_waste(lengths, 32, "bucket", max_tokens=1024) <= 1.10
    with pytest.raises(ConfigError, match="unknown batching strategy"):
        padding_waste(lengths, 32, "sorted")


def test_describe_prints_rows_labels_and_waste(data_dir, cache_dir):
    text = describe(get_task("rte"), data_dir, nanoft.load_tokenizer(), cache_dir=cache_dir)
    assert "rte:" in text and "sentence1 + sentence2 (pair)" in text
    assert "entailment 1249 / not_entailment 1241" in text and "waste_bucket" in text


# -- encoding and its cache ----------------------------------------------------------------------
def test_encoding_matches_the_tokenizer(data_dir, cache_dir):
    tokenizer = nanoft.load_tokenizer()
    rte = get_task("rte").load(data_dir, "dev")
    data = encode(rte, tokenizer, 64, cache_dir)
    for i in (0, 100, 276):
        ids, types = tokenizer.encode(rte.texts[i], rte.text_pairs[i], max_length=64)
        assert data.ids(i).tolist() == ids and data.types(i).tolist() == types
    assert data.lengths.max() == 64  # truncated to max_length
    assert set(data.token_type_ids.tolist()) == {0, 1}  # the second text is segment 1
    np.testing.assert_array_equal(data.labels, rte.labels)


def test_cached_and_uncached_runs_give_identical_batches(data_dir, tmp_path):
    examples = get_task("cola").load(data_dir, "dev")
    cold = encode(examples, nanoft.load_tokenizer(), 128, tmp_path)  # each call: a fresh tokenizer, as in a new run
    warm = encode(get_task("cola").load(data_dir, "dev"), nanoft.load_tokenizer(), 128, tmp_path)
    plain = encode(examples, nanoft.load_tokenizer(), 128, use_cache=False)
    assert not cold.from_cache and warm.from_cache and not plain.from_cache
    assert [p.name for p in (tmp_path / "encoded").iterdir()] == [f"{cold.key}.npz"]  # no temp files left
    runs = []
    for data in (cold, warm, plain):
        sampler = BucketBatchSampler(data.lengths, 16, seed=5)
        runs.append(list(batches(data, sampler, pad_token_id=0, pad_to_multiple_of=8)))
    assert len(runs[0]) == len(runs[1]) == len(runs[2]) == 66
    for a, b, c in zip(*runs):
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])


def test_cache_key_tracks_content_columns_and_max_length(data_dir, tmp_path):
    tokenizer = nanoft.load_tokenizer()
    dev = get_task("sst2").load(data_dir, "dev")
    base = encode(dev, nanoft.load_tokenizer(), 128, tmp_path)
    assert encode(dev, nanoft.load_tokenizer(), 64, tmp_path).key != base.key
    assert encode(dev.select(range(10)), tokenizer, 128, tmp_path).key != base.key
    copy = tmp_path / "sst2" / "dev.tsv"  # same file with one row changed: new content hash
    copy.parent.mkdir()
    text = (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").replace("charming", "dull", 1)
    copy.write_text(text, encoding="utf-8")
    changed = encode(get_task("sst2").load(tmp_path, "dev"), nanoft.load_tokenizer(), 128, tmp_path)
    assert changed.key != base.key and not changed.from_cache


def test_damaged_cache_file_is_rebuilt(tmp_path):
    class Tok:  # a stand-in: one token per character plus [CLS]/[SEP]
        fingerprint, pad_token_id = "chars-v1", 0

        def encode_batch(self, texts, pairs=None, max_length=512):
            ids = [[101] + [ord(c) for c in t][: max_length - 2] + [102] for t in texts]
            return ids, [[0] * len(x) for x in ids]

    examples = Examples(["ab", "cde"], None, np.array([0, 1]), np.array([1, 2]))
    first = encode(examples, Tok(), 8, tmp_path)
    path = tmp_path / "encoded" / f"{first.key}.npz"
    path.write_bytes(b"not an npz")
    again = encode(examples, Tok(), 8, tmp_path)
    assert not again.from_cache and again.ids(1).tolist() == [101, 99, 100, 101, 102]
    assert encode(examples, Tok(), 8, tmp_path).from_cache  # rewritten whole


def _rte_dev(data_dir, cache_dir):
    """RTE dev through the cache at `cache_dir`, and the cache entry's path."""
    data = encode(get_task("rte").load(data_dir, "dev"), nanoft.load_tokenizer(), 64, cache_dir)
    return data, cache_dir / "encoded" / f"{data.key}.npz"


def _same_arrays(a, b):
    for name in ("input_ids", "token_type_ids", "offsets", "labels"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_token_bit(path):
    """Flip one bit inside the stored input_ids (the zip member's data, not its header)."""
    raw = bytearray(path.read_bytes())
    start = raw.index(b"input_ids.npy") + 200  # past the member's local header and the .npy header
    raw[start] ^= 0x10
    path.write_bytes(bytes(raw))


def _rewrite_consistently_with_one_token_changed(path):
    """A well-formed npz (valid zip CRCs) whose ids no longer match the stored sha256: only the checksum can tell."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["input_ids"] = arrays["input_ids"].copy()
    arrays["input_ids"][5] += 1
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", [_truncate, _flip_a_token_bit, _rewrite_consistently_with_one_token_changed])
def test_corrupted_cache_entry_is_rebuilt_with_a_warning(data_dir, tmp_path, caplog, damage):
    fresh = encode(get_task("rte").load(data_dir, "dev"), nanoft.load_tokenizer(), 64, use_cache=False)
    first, path = _rte_dev(data_dir, tmp_path)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="nanoft.data.encode"):
        again, _ = _rte_dev(data_dir, tmp_path)
    assert not again.from_cache
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and str(path) in caplog.records[0].getMessage()
    _same_arrays(again, fresh)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nanoft.data.encode"):
        third, _ = _rte_dev(data_dir, tmp_path)
    assert third.from_cache and caplog.records == []  # the rebuilt entry was written whole
    _same_arrays(third, fresh)


class _Payload:
    """Unpickling this opens (so creates) `marker`: what a planted cache file would try to do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_in_the_cache_runs_nothing(data_dir, tmp_path, caplog):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof))).close()
    assert proof.exists()  # the payload is live: unpickling it does create its file
    fresh = encode(get_task("rte").load(data_dir, "dev"), nanoft.load_tokenizer(), 64, use_cache=False)
    _, path = _rte_dev(data_dir, tmp_path / "cache")
    for i, planted in enumerate([pickle.dumps(_Payload(tmp_path / "pwned-raw")),  # a bare pickle file
                                 None]):  # an npz whose member is a pickled object array
        if planted is None:
            np.savez(path, input_ids=np.array([_Payload(tmp_path / "pwned-npz")], dtype=object))
        else:
            path.write_bytes(planted)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="nanoft.data.encode"):
            again, _ = _rte_dev(data_dir, tmp_path / "cache")
        assert not again.from_cache and len(caplog.records) == 1 and "rebuilding" in caplog.records[0].getMessage()
        _same_arrays(again, fresh)
    assert not (tmp_path / "pwned-raw").exists() and not (tmp_path / "pwned-npz").exists()


def test_cache_entries_hold_no_pickle(data_dir, tmp_path):
    _, path = _rte_dev(data_dir, tmp_path)
    with np.load(path, allow_pickle=False) as z:  # would raise on any object array
        assert sorted(z.files) == ["input_ids", "offsets", "sha256", "token_type_ids"]
        assert all(z[k].dtype != object for k in z.files)


def test_full_disk_while_caching_is_one_clear_error(data_dir, tmp_path, monkeypatch):
    import errno

    import nanoft.io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nanoft.io.os, "replace", full)
    examples = get_task("rte").load(data_dir, "dev")
    with pytest.raises(NanoftError, match=r"^no space left on device writing .*\.npz \(set \$NANOFT_CACHE_DIR"):
        encode(examples, nanoft.load_tokenizer(), 64, tmp_path)
    assert list((tmp_path / "encoded").iterdir()) == []  # no half-written entry, no temp file


# -- collate ---------------------------------------------------------------------------------
def test_collate_pads_to_batch_max_and_multiple(sst2_dev):
    idx = [3, 10, 500]
    batch = collate(sst2_dev, idx, pad_token_id=0)
    longest = int(sst2_dev.lengths[idx].max())
    assert batch["input_ids"].shape == (3, longest) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == sst2_dev.lengths[idx].tolist()
    for row, i in enumerate(idx):
        n = int(sst2_dev.lengths[i])
        assert batch["input_ids"][row, :n].tolist() == sst2_dev.ids(i).tolist()
        assert (batch["input_ids"][row, n:] == 0).all() and (batch["attention_mask"][row, n:] == 0).all()
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == sst2_dev.labels[idx].tolist()
    assert batch["index"].tolist() == idx
    padded = collate(sst2_dev, idx, pad_token_id=0, pad_to_multiple_of=8)
    assert padded["input_ids"].shape[1] == -(-longest // 8) * 8
    regression = collate(fake_dataset([2, 3], labels=np.array([0.5, 4.0], dtype=np.float32)), [0, 1], 0)
    assert regression["labels"].dtype == torch.float32
    assert "labels" not in collate(fake_dataset([2, 3]), [0, 1], 0)  # unlabelled test data


# -- training samplers -------------------------------------------------------------------------
LENGTHS = np.random.default_rng(0).integers(3, 70, size=1003)


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
def test_sampler_epoch_covers_every_example_once(cls):
    sampler = cls(LENGTHS, 32, seed=1)
    order = flatten(sampler)
    assert sorted(order) == list(range(1003)) and len(sampler) == 32  # ceil(1003 / 32), last one partial
    assert flatten(cls(LENGTHS, 32, seed=1)) == order  # seeded
    sampler.set_epoch(1)
    assert flatten(sampler) != order  # a new order each epoch
    assert all(len(b) <= 32 for b in sampler)


def test_bucket_batches_have_similar_lengths():
    spread = [np.ptp(LENGTHS[b]) for b in BucketBatchSampler(LENGTHS, 32, chunk_multiplier=10)]
    random_spread = [np.ptp(LENGTHS[b]) for b in RandomBatchSampler(LENGTHS, 32)]
    assert np.mean(spread) < 0.2 * np.mean(random_spread)


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
def test_token_budget(cls):
    sampler = cls(LENGTHS, None, max_tokens=500, seed=2)
    seen = []
    for batch in sampler:
        assert len(batch) * LENGTHS[batch].max() <= 500
        seen += batch
    assert sorted(seen) == list(range(1003))
    capped = cls(np.array([600, 5, 5]), 8, max_tokens=500)  # too long for the budget: a batch of its own
    assert [0] in list(capped) and sorted(flatten(capped)) == [0, 1, 2]


@pytest.mark.parametrize("cls", [BucketBatchSampler, RandomBatchSampler])
def test_resume_mid_epoch(cls):
    full = cls(LENGTHS, 32, seed=3)
    full.set_epoch(2)
    expected = list(full)
    first = cls(LENGTHS, 32, seed=3)
    first.set_epoch(2)
    it = iter(first)
    taken = [next(it) for _ in range(7)]
    state = first.state_dict()  # checkpoint after 7 steps
    resumed = cls(LENGTHS, 32, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the trainer's epoch loop calls this again on resume: keeps the position
    assert taken + list(resumed) == expected
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(expected)  # the next epoch starts from its beginning
    with pytest.raises(ConfigError, match="batch_size was 32, now 16"):
        cls(LENGTHS, 16, seed=3).load_state_dict(state)


def test_resume_after_a_finished_epoch_skips_it():
    sampler = BucketBatchSampler(LENGTHS, 32)
    list(sampler)
    resumed = BucketBatchSampler(LENGTHS, 32)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == []  # nothing left of epoch 0
    assert len(list(resumed)) == 32  # a second pass without set_epoch replays the epoch


@pytest.mark.parametrize("world", [2, 3, 4])
def test_distributed_shards(world):
    shards = [BucketBatchSampler(LENGTHS, 32, seed=4, rank=r, world_size=world) for r in range(world)]
    for s in shards:
        s.set_epoch(1)
    batches_per_rank = [list(s) for s in shards]
    assert len({len(b) for b in batches_per_rank}) == 1  # same number of steps on every rank
    seen = Counter(i for rank in batches_per_rank for batch in rank for i in batch)
    assert set(seen) == set(range(1003))  # all examples trained on
    one = BucketBatchSampler(LENGTHS, 32, seed=4)
    one.set_epoch(1)
    assert sum(seen.values()) - 1003 == sum(len(b) for b in list(one)[: -32 % world])  # only the wrap repeats


# -- evaluation: every example exactly once ----------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size,max_tokens", [(32, None), (7, None), (None, 300)])
def test_eval_sees_every_example_exactly_once(world, batch_size, max_tokens):
    seen = []
    for rank in range(world):
        sampler = EvalBatchSampler(LENGTHS, batch_size, max_tokens=max_tokens, rank=rank, world_size=world)
        seen += flatten(sampler)
    assert sorted(seen) == list(range(1003))  # no dropped last batch, no padding duplicates


def test_eval_predictions_put_back_in_order(sst2_dev):
    predictions = np.full(len(sst2_dev), -1)
    for rank in range(3):
        for batch in batches(sst2_dev, EvalBatchSampler(sst2_dev.lengths, 64, rank=rank, world_size=3), 0):
            predictions[batch["index"].numpy()] = batch["labels"].numpy()  # a perfect "model"
    np.testing.assert_array_equal(predictions, sst2_dev.labels)
    lengths = [sst2_dev.lengths[b].max() for b in EvalBatchSampler(sst2_dev.lengths, 64)]
    assert lengths == sorted(lengths)  # ordered by length for speed


def test_env_cache_dir(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("NANOFT_CACHE_DIR", str(tmp_path))
    data = encode(get_task("rte").load(data_dir, "dev"), nanoft.load_tokenizer(), 32)
    assert os.path.isfile(tmp_path / "encoded" / f"{data.key}.npz")
