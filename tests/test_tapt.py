"""`nanoft bench tapt` on the tiny task: perplexity before/after on the same blocks and mask, both arms, reuse."""
from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest


def tapt_args(tiny_task, data, tmp_path):
    return ["--tasks", "sst2", "--seeds", "1,2", "--model", str(tiny_task["model"]), "--data-dir", str(data),
            "--pretrain-steps", "24", "--pretrain-lr", "3e-3", "--block", "32", "--train-subset", "48",
            "--epochs", "4", "--lr", "1e-3", "--batch-size", "8", "--max-length", "32", "--precision", "fp32",
            "--runs-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path), "--name", "tapt", "--quiet"]


@pytest.mark.slow
def test_bench_tapt_perplexity_arms_and_reuse(tiny_task, glue_like_data, tmp_path):
    from nanoft.bench.tapt import main

    main(tapt_args(tiny_task, glue_like_data, tmp_path))
    out = json.loads((tmp_path / "tapt.json").read_text())
    row, runs = out["rows"][0], out["runs"]
    # continued masked-LM on the task's own texts lowers held-out perplexity (the tiny corpus is very regular)
    assert row["ppl_after"] < 0.95 * row["ppl_before"]
    # "after" is measured on the same held-out blocks under the same fixed mask the pretraining run evaluated with:
    # the run's own final evaluation (its Trainer, its data path) gives the same perplexity
    pre = json.loads((tmp_path / "runs" / "sst2" / "pretrain" / "results.json").read_text())
    assert pre["steps"] == 24
    assert pre["final"]["dev"]["perplexity"] == pytest.approx(row["ppl_after"], abs=0.006)
    # the two arms start from different checkpoints, every seed in both
    for r in runs:
        config = tomllib.loads((tmp_path / "runs" / "sst2" / r["arm"] / f"seed{r['seed']}" / "config.toml").read_text())
        tapt_model = tmp_path / "runs" / "sst2" / "pretrain" / "best"
        expected = str(tapt_model) if r["arm"] == "tapt" else str(tiny_task["model"])
        assert config["model"] == expected
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("base", 1), ("base", 2), ("tapt", 1), ("tapt", 2)]
    base = [100 * r["accuracy"] for r in runs if r["arm"] == "base"]
    tapt = [100 * r["accuracy"] for r in runs if r["arm"] == "tapt"]
    assert row["diff"] == pytest.approx(np.mean(tapt) - np.mean(base), abs=0.006)
    se = np.sqrt(np.var(tapt, ddof=1) / 2 + np.var(base, ddof=1) / 2)
    assert row["se"] == pytest.approx(se, abs=0.006)
    # a rerun reuses every finished run: nothing retrains, the table is the same
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")}
    assert len(stamps) == 5
    main(tapt_args(tiny_task, glue_like_data, tmp_path))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("results.json")} == stamps
    assert json.loads((tmp_path / "tapt.json").read_text())["rows"] == out["rows"]


def test_bench_tapt_bad_seeds_is_one_line(tmp_path):
    from nanoft.bench.tapt import main
    from nanoft.errors import ConfigError

    with pytest.raises(ConfigError, match="--seeds 'a,b' is not a comma-separated list"):
        main(["--seeds", "a,b", "--data-dir", str(tmp_path)])
