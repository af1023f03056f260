"""`nanoft bench convert`: conversion fidelity of attention kinds against the checkpoint's own attention."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nanoft.errors import ConfigError

TEXTS = ["good fine nice day table chair", "bad awful poor lamp window door", "nice table chair lamp", "poor day"]


def test_exact_kinds_are_exact_and_a_coarse_linformer_is_not(tiny_task):
    """full at a longer (tiled) max_length, and Linformer with k = max_length under the pooling init (every
    position its own projected row), compute the checkpoint's attention exactly; k = 4 pools 16 positions
    per row and must be measurably off. The reference is the checkpoint loaded with full attention."""
    from nanoft.bench.convert import run_convert_bench

    model = str(tiny_task["model_nodrop"])
    result = run_convert_bench(["full", "linformer:k=128", "linformer:k=4"], TEXTS, model=model, examples=4,
                               max_length=128, seed=0)
    rows = {r["kind"]: r for r in result["rows"]}
    assert result["texts"] == 4 and result["limit"] == 64
    for exact in ("full", "linformer:k=128"):
        assert rows[exact]["rel_error_last"] < 1e-5 and rows[exact]["cls_cosine_min"] > 1 - 1e-6
        assert len(rows[exact]["rel_error_by_layer"]) == 2
    assert rows["linformer:k=4"]["rel_error_last"] > 1e-2


def test_fidelity_matches_a_direct_computation():
    """Relative error and [CLS] cosine against numbers computed by hand on two made-up 'texts'."""
    from nanoft.bench.convert import fidelity

    ref = [[torch.tensor([[3.0, 4.0], [0.0, 1.0]])], [torch.tensor([[1.0, 0.0]])]]
    got = [[torch.tensor([[3.0, 4.0], [0.0, 2.0]])], [torch.tensor([[0.0, 1.0]])]]
    out = fidelity(ref, got)
    # text 1: ||diff|| = 1, ||ref|| = sqrt(26); text 2: ||diff|| = sqrt(2), ||ref|| = 1
    assert out["rel_error_last"] == pytest.approx((1 / 26 ** 0.5 + 2 ** 0.5) / 2)
    assert out["cls_cosine_mean"] == pytest.approx(0.5) and out["cls_cosine_min"] == pytest.approx(0.0)


def test_bad_kind_and_too_short_max_length_are_one_line(tiny_task):
    from nanoft.bench.convert import parse_kind, run_convert_bench

    assert parse_kind("linformer:k=256,init=pooling") == ("linformer", {"k": 256, "init": "pooling"})
    with pytest.raises(ConfigError, match="unknown attention kind 'linformr'"):
        parse_kind("linformr:k=2")
    with pytest.raises(ConfigError, match="'k' is not KEY=VALUE"):
        parse_kind("linformer:k")
    with pytest.raises(ConfigError, match="--max-length 32 is below the checkpoint's 64 positions"):
        run_convert_bench(["full"], TEXTS, model=str(tiny_task["model_nodrop"]), max_length=32)
    cli = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "bench", "convert",
                          "--model", str(tiny_task["model_nodrop"]), "--kind", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0 and "unknown attention kind 'nope'" in cli.stderr and "Traceback" not in cli.stderr


def test_text_file_input(tiny_task, tmp_path):
    """--text-file: one text per line; the table is computed on them (full is exact there too)."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "bench", "convert",
                          "--model", str(tiny_task["model_nodrop"]), "--text-file", str(texts), "--max-length", "64",
                          "--kind", "full", "--examples", "3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("full "))
    assert int(row[1]) == 0 and float(row[3]) == 0.0 and float(row[4]) == 1.0  # steps, last-layer error, cosine
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    bad = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "bench", "convert",
                          "--model", str(tiny_task["model_nodrop"]), "--text-file", str(tmp_path / "bad.txt")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not UTF-8" in bad.stderr and "Traceback" not in bad.stderr


def test_transfer_rows_are_measured_after_transfer_on_other_texts(tiny_task):
    """--transfer-steps: a Linformer row after transfer, lower in error than the converted one; kinds without
    parameters of their own (full) get no second row."""
    from nanoft.bench.convert import run_convert_bench

    texts = TEXTS + [f"{a} {b} table chair lamp" for a in ("good", "bad", "nice") for b in ("day", "door", "window")]
    result = run_convert_bench(["full", "linformer:k=4"], texts, model=str(tiny_task["model_nodrop"]), examples=4,
                               max_length=64, transfer_steps=40, transfer_lr=1e-2, transfer_batch=4)
    rows = [(r["kind"], r["transfer_steps"]) for r in result["rows"]]
    assert rows == [("full", 0), ("linformer:k=4", 0), ("linformer:k=4", 40)]
    before, after = result["rows"][1], result["rows"][2]
    assert after["rel_error_last"] < before["rel_error_last"]
