"""The kernel benchmark's pieces on CPU: real length estimates, rows and ratios (no timing assertions)."""
from __future__ import annotations

import statistics

import pytest
import torch

from nanoft.bench import attention_kernels as kb


QUICK = kb.Measure(device="cpu", warm_s=0.0, measure_s=0.0, min_repeat=1)


def test_length_estimates_match_the_data_profile():
    """Whitespace words x 1.3 + 2 lands near the WordPiece profile in the data README (13.3 / 304 mean)."""
    if not (kb.DATA_DIR / "sst2" / "train.tsv").exists():
        pytest.skip("shared data not present")
    sst2, imdb = kb.estimated_lengths("sst2"), kb.estimated_lengths("imdb")
    assert len(sst2) == 67349 and len(imdb) == 2000
    assert 12 < statistics.mean(sst2) < 15 and 270 < statistics.mean(imdb) < 330
    batch = kb.sample_batch(imdb, 8, seed=0)
    assert batch == kb.sample_batch(imdb, 8, seed=0) and batch == sorted(batch, reverse=True)


def test_dense_and_padded_rows_on_cpu():
    rows = kb.run_kernel_bench([32], [16], 1, 2, torch.float32, "cpu", ["naive", "sdpa"], ["fwd"], measure=QUICK)
    assert [(r["impl"], r["status"]) for r in rows] == [("naive", "ok"), ("sdpa", "ok")]
    assert all(r["ms"] > 0 and r["tflops"] > 0 for r in rows)
    assert rows[1]["speedup_vs_sdpa"] == 1.0
    padded = kb.run_padded_bench({"toy": [9, 3]}, 16, 2, torch.float32, "cpu", ["naive", "sdpa"], ["fwd_bwd"],
                                  measure=QUICK)
    assert [r["n"] for r in padded] == [9, 9] and all(r["status"] == "ok" for r in padded)
    assert padded[0]["real_frac"] == pytest.approx(12 / 18)


def test_naive_matches_sdpa_with_padding():
    q, k, v = (torch.randn(2, 2, 7, 16) for _ in range(3))
    mask = torch.arange(7)[None, :] >= torch.tensor([7, 4])[:, None]
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~mask[:, None, None, :])
    assert (kb.naive_attention(q, k, v, mask) - want).abs().max() < 1e-5
