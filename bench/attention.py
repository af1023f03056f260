"""Attention micro-benchmark: forward and forward+backward time and peak memory per kind and length.

    rows = run_attention_bench(["full", "performer"], seq_lens=(512, 1024, 2048))

Memory is the peak that one forward+backward adds on top of the inputs and the module:
on CUDA `torch.cuda.max_memory_allocated`; on CPU each case runs in a fresh subprocess whose
peak resident set is reset (`/proc/self/clear_refs`) just before the measured call and read from
`VmHWM` after it, with glibc told to return every large block to the OS on free, so the number
is what the step itself needed. A log-log fit of time and memory against n gives each kind's
scaling exponent (2 for full attention in theory, 1 for the efficient kinds).

Besides the registry kinds, "reference" is the dense attention of `nanoft.kernels.reference_attention`,
which stores the n x n matrix: the O(n^2)-memory baseline that `full` (fused SDPA / Triton) avoids.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nanoft import kernels
from nanoft.attention import available, build
from nanoft.bench.common import format_table, time_it, write_results

DEFAULT_SEQ_LENS = (128, 256, 512, 1024, 2048, 4096)
REFERENCE = "reference"
FIT_FROM = 512
TIME_BUDGET_S, MAX_REPEAT = 1.0, 25
log = logging.getLogger(__name__)  # fit slopes on n >= this, where fixed per-call overheads no longer dominate


def _status_mb(key: str) -> float:
    """A `/proc/self/status` field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) / 1024.0


def _attention(kind: str, heads: int, head_dim: int, seq: int, options: Dict[str, Any],
               device: torch.device, dtype: torch.dtype):
    """The callable for one kind, built for exactly `seq` tokens."""
    if kind == REFERENCE:
        return lambda q, k, v: kernels.reference_attention(q, k, v)
    module = build(kind, num_heads=heads, head_dim=head_dim, max_length=seq, **options)
    return module.to(device, dtype).eval()


def _setup(kind: str, seq: int, batch: int, heads: int, head_dim: int, device: str, dtype: str,
           options: Optional[Dict[str, Any]]):
    """The attention callable and its inputs (q, k, v need grad) plus an upstream gradient."""
    torch.manual_seed(0)
    dev, dt = torch.device(device), getattr(torch, dtype)
    attention = _attention(kind, heads, head_dim, seq, options or {}, dev, dt)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    return attention, (q, k, v), torch.randn_like(q)


def _steps(attention, qkv: Sequence[torch.Tensor], grad_out: torch.Tensor):
    """forward (no grad, as in inference) and forward+backward (grads of q, k, v and parameters)."""
    def forward() -> None:
        with torch.no_grad():
            attention(*qkv)

    def forward_backward() -> None:
        for t in qkv:
            t.grad = None
        attention(*qkv).backward(grad_out)

    return forward, forward_backward


def measure_time(kind: str, seq: int, *, batch: int = 1, heads: int = 4, head_dim: int = 64, device: str = "cpu",
                 dtype: str = "float32", backward: bool = True, options: Optional[Dict[str, Any]] = None,
                 repeat: int = 3) -> Dict[str, float]:
    """Median milliseconds of forward and of forward+backward (NaN when backward is off).

    Short steps are repeated until about `TIME_BUDGET_S` is spent (at least `repeat` times), so
    the median is not at the mercy of a scheduler hiccup on a shared machine.
    """
    attention, qkv, grad_out = _setup(kind, seq, batch, heads, head_dim, device, dtype, options)
    forward, forward_backward = _steps(attention, qkv, grad_out)
    sync = torch.device(device).type == "cuda"

    def median_ms(fn) -> float:
        first = time_it(fn, warmup=1, repeat=1, sync=sync)
        return 1e3 * time_it(fn, warmup=0, repeat=max(repeat, min(MAX_REPEAT, int(TIME_BUDGET_S / first))), sync=sync)

    return {"fwd_ms": median_ms(forward), "fwd_bwd_ms": median_ms(forward_backward) if backward else float("nan")}


def measure_memory(kind: str, seq: int, *, batch: int = 1, heads: int = 4, head_dim: int = 64, device: str = "cpu",
                   dtype: str = "float32", backward: bool = True, options: Optional[Dict[str, Any]] = None,
                   **_: Any) -> float:
    """MiB that one step (forward+backward, or forward) adds at its peak, after one warm-up step.

    On CPU this is exact only in a fresh process started by `_measure_memory_isolated`.
    """
    attention, qkv, grad_out = _setup(kind, seq, batch, heads, head_dim, device, dtype, options)
    forward, forward_backward = _steps(attention, qkv, grad_out)
    step = forward_backward if backward else forward
    step()  # warm-up: libraries, thread pools, workspaces
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    step()
    return _status_mb("VmHWM") - base


def _measure_memory_isolated(case: Dict[str, Any]) -> float:
    """`measure_memory` in a fresh interpreter whose glibc returns every block >= 64 KiB on free
    (so neither earlier cases nor the warm-up leave reusable heap behind). NaN if it fails."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-m", "nanoft.bench.attention", "--case", json.dumps(case)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        log.warning("memory case %s failed: %s", case, (proc.stderr.strip().splitlines() or ["?"])[-1])
        return float("nan")
    return float(proc.stdout.strip().splitlines()[-1])


def log_log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Exponent p of y ~ n^p, fitted on the finite points (NaN if fewer than two)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y == y and y > 0]
    if len(pts) < 2:
        return float("nan")
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


def run_attention_bench(kinds: Sequence[str], seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, batch: int = 1,
                        heads: int = 4, head_dim: int = 64, device: str = "cpu", backward: bool = True,
                        dtype: str = "float32", options: Optional[Dict[str, Dict[str, Any]]] = None,
                        repeat: int = 3, isolate: Optional[bool] = None,
                        threads: Optional[int] = None) -> List[Dict[str, Any]]:
    """One row per (kind, seq): fwd_ms, fwd_bwd_ms, peak_mb, and their ratios to `full` when it ran.

    options: per-kind options, e.g. {"longformer": {"window": 128}}; isolate: measure each case's
    memory in a fresh subprocess (default on CPU, where it is the only clean way to read a peak);
    threads: torch CPU threads for the run (default: leave as is).
    """
    unknown = [kind for kind in kinds if kind != REFERENCE and kind not in available()]
    if unknown:
        build(unknown[0], num_heads=heads, head_dim=head_dim, max_length=max(seq_lens))  # raises ConfigError
    isolate = (torch.device(device).type == "cpu") if isolate is None else isolate
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rows = _run_cases(kinds, seq_lens, batch, heads, head_dim, device, backward, dtype, options, repeat, isolate)
    finally:
        torch.set_num_threads(threads_before)
    for base in ("full", REFERENCE):
        if base in kinds:
            _add_ratios(rows, base)
    return rows


def _add_ratios(rows: List[Dict[str, Any]], base: str) -> None:
    """mem_vs_<base> (peak memory ratio) and speedup_vs_<base> (fwd+bwd time ratio) per row."""
    by_seq = {r["seq"]: r for r in rows if r["kind"] == base}
    for r in rows:
        ref = by_seq.get(r["seq"])
        r[f"mem_vs_{base}"] = r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] > 0 else float("nan")
        r[f"speedup_vs_{base}"] = ref["fwd_bwd_ms"] / r["fwd_bwd_ms"] if ref else float("nan")


def _run_cases(kinds, seq_lens, batch, heads, head_dim, device, backward, dtype, options, repeat, isolate):
    rows = []
    for kind in kinds:
        for seq in seq_lens:
            case = {"kind": kind, "seq": seq, "batch": batch, "heads": heads, "head_dim": head_dim,
                    "device": device, "dtype": dtype, "backward": backward,
                    "options": (options or {}).get(kind, {}), "repeat": repeat}
            row = {"kind": kind, "seq": seq, **measure_time(**case)}
            row["peak_mb"] = _measure_memory_isolated(case) if isolate else measure_memory(**case)
            rows.append(row)
    return rows


def summarize(rows: Sequence[Dict[str, Any]], at: int = 4096, fit_from: int = FIT_FROM) -> Dict[str, Dict[str, Any]]:
    """Per kind: log-log slopes of fwd+bwd time and peak memory vs n, and the target check at n = `at`
    (or the longest n measured): an efficient kind meets it against a baseline when its peak memory is
    <= 1/4 of the baseline's and its fwd+bwd is faster."""
    out: Dict[str, Dict[str, Any]] = {}
    seqs = {r["seq"] for r in rows}
    at = at if at in seqs else max(seqs)
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        fit = [r for r in mine if r["seq"] >= fit_from] or mine
        time_key = "fwd_bwd_ms" if any(r["fwd_bwd_ms"] == r["fwd_bwd_ms"] for r in fit) else "fwd_ms"
        facts: Dict[str, Any] = {
            "time_slope": log_log_slope([r["seq"] for r in fit], [r[time_key] for r in fit]),
            "mem_slope": log_log_slope([r["seq"] for r in fit], [r["peak_mb"] for r in fit]),
            "fit_seq": f"{fit[0]['seq']}-{fit[-1]['seq']}"}
        point = next(r for r in mine if r["seq"] == at)
        for base in ("full", REFERENCE):
            if f"mem_vs_{base}" not in point or kind in ("full", REFERENCE):
                continue
            mem, speed = point[f"mem_vs_{base}"], point[f"speedup_vs_{base}"]
            facts[f"mem_vs_{base}@{at}"], facts[f"speedup_vs_{base}@{at}"] = mem, speed
            facts[f"target_vs_{base}"] = "met" if mem <= 0.25 and speed > 1.0 else "missed"
        out[kind] = facts
    return out


def main(kinds: Sequence[str] = ("full", "linformer", "performer", "longformer", "bigbird"),
         seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, batch: int = 1, heads: int = 4, head_dim: int = 64,
         device: str = "cpu", backward: bool = True, dtype: str = "float32", repeat: int = 3,
         options: Optional[Dict[str, Dict[str, Any]]] = None, threads: Optional[int] = None,
         name: Optional[str] = None, write: bool = True, notes: str = ""
         ) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]], str]:
    """Run, summarise and (if `write`) save `bench/results/attention_<device>.{json,md}`.

    Returns (rows, summary, text) where text is the two tables for the CLI to print.
    """
    rows = run_attention_bench(kinds, seq_lens, batch=batch, heads=heads, head_dim=head_dim, device=device,
                               backward=backward, dtype=dtype, options=options, repeat=repeat, threads=threads)
    summary = summarize(rows)
    columns = list(dict.fromkeys(key for facts in summary.values() for key in facts))
    slope_rows = [{"kind": kind, **{c: facts.get(c) for c in columns}} for kind, facts in summary.items()]
    text = format_table(rows) + "\n\n" + format_table(slope_rows)
    if write:
        meta = {"batch": batch, "heads": heads, "head_dim": head_dim, "device": device, "dtype": dtype,
                "backward": backward, "repeat": f">= {repeat}, up to {MAX_REPEAT} within ~{TIME_BUDGET_S} s",
                "threads": threads or torch.get_num_threads(), "options": options or "defaults",
                "memory": ("peak MiB one step adds after a warm-up step (the previous step's q/k/v grads are "
                           "freed and re-made, so they cancel): "
                           + ("CUDA max_memory_allocated delta" if device.startswith("cuda")
                              else "VmHWM - VmRSS in a fresh process, MALLOC_MMAP_THRESHOLD_=65536")),
                "summary": summary}
        text_notes = (f"Slopes are log-log fits of fwd+bwd time and peak memory against n >= {FIT_FROM}. "
                      "target_vs_X: met when peak memory <= 1/4 of X's and fwd+bwd is faster than X's at "
                      "n = 4096 (or the longest n run).\n\n"
                      + format_table(slope_rows, markdown=True) + (f"\n\n{notes}" if notes else ""))
        write_results(name or f"attention_{torch.device(device).type}", rows, meta=meta, notes=text_notes)
    return rows, summary, text


def _cli(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Attention micro-benchmark")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one isolated case as JSON
    parser.add_argument("--kinds", default="full,linformer,performer,longformer,bigbird")
    parser.add_argument("--seq-lens", default=",".join(map(str, DEFAULT_SEQ_LENS)))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--notes", default="")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(measure_memory(**json.loads(args.case))))
        return
    _, _, text = main(args.kinds.split(","), [int(n) for n in args.seq_lens.split(",")], batch=args.batch,
                      heads=args.heads, head_dim=args.head_dim, device=args.device, backward=not args.no_backward,
                      dtype=args.dtype, repeat=args.repeat, threads=args.threads, name=args.name, notes=args.notes)
    print(text)


if __name__ == "__main__":
    _cli()
