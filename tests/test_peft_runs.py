"""`nanoft bench peft-runs`: tables built from run folders — means, sample stds, ratios to full fine-tuning, the
adapter file's size and the sweep's winners — checked against numbers worked out by hand."""
from __future__ import annotations

import json
import math

from nanoft.bench.peft_runs import seed_rows, sweep_rows, winners
from nanoft.train.config import to_toml


def fake_run(root, name, seed, *, acc, speed, memory, peft=None, lr=1e-4, epochs=(0.5,), adapter_bytes=None,
             targets=None):
    """A finished run folder as the trainer writes it (config.toml, metrics.jsonl, results.json)."""
    run = root / name / f"seed{seed}"
    run.mkdir(parents=True)
    config = {"task": "sst2", "seed": seed, "lr": lr, "epochs": 1.0, "train_subset": 100}
    if peft:
        config.update(peft=peft, peft_options={"r": 8, "alpha": 16.0, "targets": targets or ["query", "value"]})
    (run / "config.toml").write_text(to_toml(config))
    lines = [{"step": 1, "loss": 0.5}] + [{"step": 2 * i, "eval": {"dev": {"accuracy": a}}} for i, a in enumerate(epochs)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    results = {"task": "sst2", "main_metric": "accuracy", "best": {"score": acc, "metrics": {"dev": {"accuracy": acc}}},
               "examples_per_s": speed, "peak_memory_mb": memory, "parameters": 1000,
               "trainable_parameters": 1000 if not peft else 20, "train_seconds": 1.0}
    (run / "results.json").write_text(json.dumps(results))
    if adapter_bytes:
        (run / "best" / "adapter").mkdir(parents=True)
        (run / "best" / "adapter" / "adapter.safetensors").write_bytes(b"\0" * adapter_bytes)


def test_seed_table_means_stds_and_ratios(tmp_path):
    fake_run(tmp_path, "full", 1, acc=0.80, speed=100.0, memory=1000.0)
    fake_run(tmp_path, "full", 2, acc=0.84, speed=110.0, memory=1100.0)
    fake_run(tmp_path, "lora", 1, acc=0.81, speed=150.0, memory=900.0, peft="lora", lr=2e-3,
             epochs=(0.70, 0.79), adapter_bytes=2**20)
    fake_run(tmp_path, "lora", 2, acc=0.79, speed=165.0, memory=940.0, peft="lora", lr=2e-3,
             epochs=(0.72, 0.81), adapter_bytes=2**20)
    rows = {r["experiment"]: r for r in seed_rows(tmp_path, "dev.accuracy")}
    full, lora = rows["full"], rows["lora"]
    assert full["mean"] == 0.82 and math.isclose(full["std"], 0.0283, abs_tol=1e-4)  # sqrt(2 * 0.02² / 1)
    assert lora["mean"] == 0.80 and lora["per_seed"] == [0.81, 0.79] and lora["seeds"] == [1, 2]
    assert lora["Δ_vs_full_points"] == -2.0
    assert lora["speed_vs_full"] == round(157.5 / 105.0, 2) and lora["memory_vs_full"] == round(920 / 1050, 3)
    assert lora["adapter_MB"] == 1.0 and full["adapter_MB"] is None
    assert lora["dev accuracy by epoch (mean)"] == [0.71, 0.8]
    assert lora["trainable_%"] == 2.0 and lora["targets"] == "query,value" and full["targets"] == "-"


def test_sweep_rows_and_winners(tmp_path):
    fake_run(tmp_path, "all_lr1e-3", 42, acc=0.84, speed=1, memory=1, peft="lora", lr=1e-3,
             targets=["query", "key", "value", "attention.output", "ffn.intermediate", "ffn.output"])
    fake_run(tmp_path, "all_lr2e-3", 42, acc=0.85, speed=1, memory=1, peft="lora", lr=2e-3,
             targets=["ffn.output", "query", "key", "value", "attention.output", "ffn.intermediate"])
    fake_run(tmp_path, "qv_lr2e-3", 42, acc=0.81, speed=1, memory=1, peft="lora", lr=2e-3)
    fake_run(tmp_path, "full", 42, acc=0.83, speed=1, memory=1)
    rows = sweep_rows([tmp_path])
    assert [(r["method"], r["targets"], r["lr"]) for r in rows] == [
        ("full", "-", 1e-4), ("lora", "all-linear", 1e-3), ("lora", "all-linear", 2e-3), ("lora", "query,value", 2e-3)]
    best = winners(rows)["sst2"]
    assert (best["lora"]["lr"], best["lora"]["targets"], best["full"]["dev_best"]) == (2e-3, "all-linear", 0.83)
