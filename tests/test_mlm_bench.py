"""`nanoft bench mlm`: its FLOP accounting against a hand count, and its two sides see the same blocks."""
import numpy as np
import pytest

from nanoft.bench.mlm import flop_accounting, hf_batch, hf_collator, hf_examples, pick_batches


def test_flop_accounting_matches_a_hand_count():
    # hidden 4, 2 layers, intermediate 8, vocab 10, seq 6; a multiply-add is 2 FLOPs
    f = flop_accounting(hidden=4, layers=2, intermediate=8, vocab=10, seq=6, mask_rate=0.5)
    # one layer, one token, forward: Q, K, V, O (4·4 MACs each) = 128; up and down (4·8 MACs each) = 128;
    # scores against 6 keys of width 4 = 48; weighted sum of 6 values of width 4 = 48  -> 352
    assert f["encoder_forward"] == 2 * 352
    assert f["encoder_backward"] == 2 * 704
    assert f["encoder_step"] == 2112
    # head: dense 4·4 MACs = 32, projection 4·10 MACs = 80  -> 112 forward, 224 backward
    assert f["head_transform_forward"] == 32
    assert f["projection_forward"] == 80
    assert f["head_backward"] == 224
    assert f["head_step"] == 336
    assert f["step_projection_every_position"] == 2112 + 336
    assert f["step_projection_masked_only"] == 2112 + 168  # the head at half of the positions
    assert f["ideal_speedup"] == pytest.approx(2448 / 2280)
    assert f["head_over_encoder"] == pytest.approx(336 / 2112)


def test_both_sides_see_the_same_blocks():
    pytest.importorskip("transformers")
    from nanoft.data.masking import IGNORE, label_grid
    from nanoft.data.packing import pack
    from nanoft.train.mlm import MaskedLM
    from nanoft.weights import default_model_path, load_tokenizer

    model_dir = str(default_model_path())
    tokenizer = load_tokenizer(model_dir)
    texts = [f"the film number {i} was a {'quiet' if i % 2 else 'loud'} and rather charming surprise" for i in range(20)]
    block, batch_size = 16, 3
    data = pack(tokenizer, texts, block)
    batches = pick_batches(data.lengths, block, batch_size, 4, seed=0)
    used = [i for b in batches for i in b]
    assert len(set(used)) == len(used) and all(data.lengths[i] == block for i in used)  # distinct full blocks

    objective = MaskedLM(rate=0.15)
    objective.prepare(tokenizer, seed=0)
    collator = hf_collator(model_dir, 0.15, seed=0)
    examples = hf_examples(data, used)
    for indices in batches:
        ours = objective.collate(data, indices, tokenizer.pad_token_id, None)
        theirs = hf_batch(collator, examples, indices)
        blocks = np.stack([data.ids(i) for i in indices]).astype(np.int64)  # (B, block): the unmasked tokens
        assert ours["input_ids"].shape == theirs["input_ids"].shape == (batch_size, block)
        # the same number of real tokens per batch: full blocks, no padding on either side
        assert int(ours["attention_mask"].sum()) == int(theirs["attention_mask"].sum()) == batch_size * block
        # each side's masked inputs with its labels put back give exactly these blocks
        for inputs, labels in ((ours["input_ids"], label_grid(ours)), (theirs["input_ids"], theirs["labels"])):
            restored = np.where(labels.numpy() != IGNORE, labels.numpy(), inputs.numpy())
            np.testing.assert_array_equal(restored, blocks)
            special = np.stack([data.special_of(i) for i in indices])
            assert (labels.numpy()[special] == IGNORE).all()  # [CLS]/[SEP] never predicted on either side
            assert (labels.numpy() != IGNORE).any()
