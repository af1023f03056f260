"""FLOP counting (hand count, torch's FLOP counter) and `nanoft bench parity` on a tiny preset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nanoft.config import ModelConfig
from nanoft.flops import (matmul_peak_flops, training_flops, training_flops_of_lengths, training_flops_per_token,
                          utilisation)

TINY = ModelConfig(family="bert", vocab_size=50, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                   max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)


def test_flops_per_token_equals_hand_count():
    # h = 8, i = 16, L = 2 layers, c = 3 labels, a sequence of n = 5 real tokens; forward, per token:
    qkvo = 2 * 4 * 8 * 8          # Q, K, V, O projections: 4 matmuls of h x h          = 512
    scores = 2 * 5 * 8            # QK^T: a dot product of length h with each of n keys  =  80
    weighted = 2 * 5 * 8          # softmax(QK^T) V: n weights times h values            =  80
    ffn = 2 * 8 * 16 + 2 * 16 * 8  # up (h -> i) and down (i -> h)                      = 512
    layer = qkvo + scores + weighted + ffn                                              # = 1184
    head = 2 * 8 * 8 + 2 * 8 * 3  # pooler dense on [CLS] + classifier, once per sequence = 176
    embedding = 0                 # lookups, not matmuls
    forward_per_token = embedding + 2 * layer + head / 5                                # = 2403.2
    assert forward_per_token == pytest.approx(2403.2)
    # backward = 2 x forward (input and weight gradient of every matmul): training = 3 x forward
    assert training_flops_per_token(TINY, 5, num_labels=3) == pytest.approx(3 * 2403.2)
    # two sequences of 5 and 3 tokens: per-sequence sums
    seq3 = 3 * 2 * (qkvo + 2 * 2 * 3 * 8 + ffn) + head  # 6896
    seq5 = 5 * 2 * layer + head                          # 12016
    assert training_flops_of_lengths(TINY, [5, 3], num_labels=3) == 3 * (seq3 + seq5) == 56736
    assert training_flops(TINY, tokens=8, token_pairs=25 + 9, sequences=2, num_labels=3) == 56736


def test_flops_match_torch_flop_counter_on_a_training_step():
    """An independent count: torch's FlopCounterMode over one forward + backward of the model (padded path,
    one sequence without padding, so every counted matmul is real work). SDPA's math backend: the counter
    sees its matmuls (CPU's fused kernel has no FLOP formula registered)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from nanoft.models import EncoderModel

    config = ModelConfig(**{**TINY.__dict__, "unpad": False, "extra": {}})
    model = EncoderModel(config, head="classification", num_labels=3).init_weights().train()
    ids = torch.randint(5, 50, (1, 7))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, attention_mask=torch.ones_like(ids)).sum().backward()
    assert counter.get_total_flops() == training_flops_of_lengths(config, [7], num_labels=3)


def test_calibration_and_utilisation_are_reported():
    peak = matmul_peak_flops("fp32", size=256, repeat=2)
    assert peak > 0 and matmul_peak_flops("fp32", size=256, repeat=2) == peak  # measured once, then cached
    u = utilisation(TINY, tokens=800, token_pairs=8000, sequences=100, seconds=0.5, device=torch.device("cpu"),
                    precision="fp32", num_labels=2)
    assert set(u) == {"train_flops", "train_flops_per_s", "peak_flops_per_s", "flop_utilisation"}
    assert u["train_flops_per_s"] == pytest.approx(u["train_flops"] / 0.5)
    assert u["flop_utilisation"] == pytest.approx(u["train_flops_per_s"] / u["peak_flops_per_s"])


def test_trainer_results_report_flops(tiny_config):
    from nanoft.train import Trainer

    results = Trainer(tiny_config(epochs=1)).fit()
    assert results["train_flops"] > 0 and results["peak_flops_per_s"] > 0  # a FLOP count; a calibrated peak
    # the per-second figures are wall-clock: only their definitions are checked
    # (train_seconds is rounded to the millisecond)
    seconds = results["train_flops"] / results["train_flops_per_s"]
    assert seconds == pytest.approx(results["train_seconds"], abs=5e-4)
    assert results["flop_utilisation"] == pytest.approx(results["train_flops_per_s"] / results["peak_flops_per_s"])


# ------------------------------------------------------------------------------ bench parity, tiny preset
def test_bench_parity_tiny_preset_same_examples_same_eval_order(glue_like_data, tiny_task, tmp_path):
    from nanoft.bench.parity import PRESETS, run_parity

    out = run_parity(PRESETS["tiny"], model=str(tiny_task["model"]), data_dir=str(glue_like_data), isolate=False,
                     out_dir=tmp_path)
    runs = out["runs"]
    assert len(runs) == 2 * 2 * 2  # tasks x sides x seeds
    for task in ("sst2", "cola"):
        rs = [r for r in runs if r["task"] == task]
        assert {r["side"] for r in rs} == {"nanoft", "transformers"}
        # every run trained on the same token sequences (each of the 48 once) and scored the same eval examples
        # in the same order with the same labels
        assert len({r["train_hash"] for r in rs}) == 1 and len({r["eval_hash"] for r in rs}) == 1
        assert all(r["examples"] == 48 for r in rs)
        assert out["checks"][task]["same_weight_decay_split"] and out["checks"][task]["same_dropout"]
        assert out["checks"][task]["same_lr_schedule"]
        for r in rs:  # wall-clock figures: reported, never asserted as speeds; only their definitions are checked
            # (results.json rounds the seconds to the millisecond)
            seen = r["examples_per_s"] * r["train_seconds"]
            assert seen == pytest.approx(r["examples"], abs=r["examples_per_s"] * 5e-4)
            assert r["flop_utilisation"] == pytest.approx(r["train_flops_per_s"] / r["peak_flops_per_s"])
    row = next(r for r in out["rows"] if r["task"] == "sst2")
    side = {s: [r for r in runs if r["task"] == "sst2" and r["side"] == s] for s in ("nanoft", "transformers")}
    mean = lambda s, k: sum(r[k] for r in side[s]) / len(side[s])
    assert row["speedup"] == pytest.approx(mean("nanoft", "examples_per_s") / mean("transformers", "examples_per_s"))
    assert row["nanoft_util_pct"] == pytest.approx(100 * mean("nanoft", "flop_utilisation"))
    assert row["transformers_util_pct"] == pytest.approx(100 * mean("transformers", "flop_utilisation"))
    # the standard error and Welch's t follow from the per-seed metrics
    ours = [100 * r["metric"] for r in runs if r["task"] == "sst2" and r["side"] == "nanoft"]
    ref = [100 * r["metric"] for r in runs if r["task"] == "sst2" and r["side"] == "transformers"]
    se = math.sqrt(np.var(ours, ddof=1) / 2 + np.var(ref, ddof=1) / 2)
    assert row["se"] == pytest.approx(se, abs=0.006)
    assert row["diff"] == pytest.approx(np.mean(ours) - np.mean(ref), abs=0.006)
    for suffix in (".md", ".json", ".csv"):
        assert (tmp_path / f"parity{suffix}").is_file()
    # nanoft with shuffled batches added beside the same transformers seeds: the same examples, another order
    more = run_parity(PRESETS["tiny"], tasks=["sst2"], sides=["nanoft"], samplers=["random"], previous=runs,
                      model=str(tiny_task["model"]), data_dir=str(glue_like_data), isolate=False, name=None)
    added = [r for r in more["runs"] if r["sampler"] == "random"]
    assert len(added) == 2 and {r["train_hash"] for r in added} == {runs[0]["train_hash"]}
    assert [(r["task"], r["nanoft_sampler"]) for r in more["rows"]] == [("sst2", "bucket"), ("cola", "bucket"),
                                                                        ("sst2", "random")]


def test_bench_parity_scores_forced_predictions_identically(glue_like_data, tiny_task):
    """Both sides score the same fixed predictions; the scores equal a hand computation on the dev file."""
    from nanoft.bench.parity import PRESETS, RunSpec, forced_prediction, run_one
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(tiny_task["model"]))
    ts = PRESETS["tiny"].tasks["cola"]
    lines = (glue_like_data / "cola" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    order = np.sort(np.random.default_rng([0, 1]).permutation(len(lines))[:ts.eval])  # the bench's eval subset
    texts = [lines[i].split("\t")[0] for i in order]
    labels = np.array([int(lines[i].split("\t")[1]) for i in order])
    preds = np.array([forced_prediction(tok(t)["input_ids"], 2) for t in texts])
    tp, tn = int(((preds == 1) & (labels == 1)).sum()), int(((preds == 0) & (labels == 0)).sum())
    fp, fn = int(((preds == 1) & (labels == 0)).sum()), int(((preds == 0) & (labels == 1)).sum())
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    scores = {}
    for side in ("nanoft", "transformers"):
        spec = RunSpec(side=side, task="cola", seed=0, train=ts.train, eval=ts.eval, max_length=ts.max_length,
                       eval_split="dev", epochs=1, batch_size=8, lr=1e-3, model=str(tiny_task["model"]),
                       data_dir=str(glue_like_data), eval_batch_size=7, force_predictions=True)
        scores[side] = run_one(spec, isolate=False)["metrics"]
    for side in scores:
        assert scores[side]["accuracy"] == pytest.approx((tp + tn) / len(labels), abs=1e-12)
        assert scores[side]["matthews_corrcoef"] == pytest.approx(mcc, abs=1e-12)


def test_bench_parity_merge_replaces_a_rerun_of_the_same_run(glue_like_data, tiny_task):
    """--merge: a run of the same task, precision, side, sampler and seed replaces the earlier one (a task rerun
    with a changed spec must not be averaged with the runs it replaces); other runs are kept."""
    from dataclasses import replace

    from nanoft.bench.parity import PRESETS, run_parity

    tiny = PRESETS["tiny"]
    first = run_parity(tiny, tasks=["sst2", "cola"], sides=["nanoft"], model=str(tiny_task["model"]),
                       data_dir=str(glue_like_data), isolate=False, name=None)["runs"]
    cola_again = replace(tiny, tasks={**tiny.tasks, "cola": replace(tiny.tasks["cola"], lr=3e-3)})
    merged = run_parity(cola_again, tasks=["cola"], sides=["nanoft"], previous=first, model=str(tiny_task["model"]),
                        data_dir=str(glue_like_data), isolate=False, name=None)["runs"]
    assert len(merged) == len(first) == 4
    assert [r["lr"] for r in merged if r["task"] == "cola"] == [3e-3, 3e-3]
    assert [r for r in merged if r["task"] == "sst2"] == [r for r in first if r["task"] == "sst2"]
    # one side alone is summarised without a comparison, not divided by zero
    row = next(r for r in run_parity(tiny, tasks=["cola"], sides=["nanoft"], model=str(tiny_task["model"]),
                                     data_dir=str(glue_like_data), isolate=False, name=None)["rows"])
    assert row["transformers"] == "-" and row["diff"] is None and row["accuracy_target"] is None
