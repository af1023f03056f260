"""Attention kernel benchmark: nanoft's Triton flash attention against naive torch, torch SDPA (flash,
memory-efficient and math backends) and FlexAttention, forward and forward+backward.

Two cases:
  dense   q, k, v (batch, heads, n, d) with no mask, n = 512..16384, 16k tokens per batch.
  padded  a batch of real length distributions padded to its longest sequence (SST-2 phrases, IMDB
          reviews), where SDPA needs a mask and nanoft skips padded blocks (or packs with varlen).

Lengths are estimated from the real files without a tokenizer (whitespace words x 1.3 + 2, which gives
SST-2 mean 13.7 / max 69 and IMDB mean 293 / max 1953 against WordPiece's 13.3 / 66 and 304 / 1959),
then a batch is sampled with a fixed seed; the sampled lengths are stored with the results.

On CPU only SDPA and naive run, at small sizes, so the command works everywhere.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from nanoft import kernels
from nanoft.bench.common import RESULTS_DIR, format_table, time_it, write_results

DATA_DIR = Path(os.environ.get("NANOFT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
GPU_IMPLS = ("nanoft", "naive", "sdpa_flash", "sdpa_efficient", "sdpa_math", "flex")
GPU_PADDED_IMPLS = ("nanoft", "nanoft_varlen", "naive", "sdpa", "flex")
CPU_IMPLS = ("naive", "sdpa")


# ---- inputs ------------------------------------------------------------------------------------


def estimated_lengths(dataset: str, data_dir: Path = DATA_DIR) -> List[int]:
    """Token-length estimate of every row of a real data file: whitespace words x 1.3 + [CLS]/[SEP]."""
    if dataset == "sst2":
        with open(data_dir / "sst2" / "train.tsv", encoding="utf-8") as f:
            rows = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
    elif dataset == "imdb":
        with open(data_dir / "imdb" / "reviews.csv", encoding="utf-8", newline="") as f:
            rows = [row["review"].replace("<br />", " ") for row in csv.DictReader(f)]
    else:
        raise ValueError(f"unknown dataset {dataset!r} (sst2 or imdb)")
    return [int(len(text.split()) * 1.3) + 2 for text in rows]


def sample_batch(lengths: Sequence[int], batch: int, seed: int = 0) -> List[int]:
    """A seeded random batch of lengths, longest first (the order does not change the cost)."""
    return sorted(random.Random(seed).sample(list(lengths), batch), reverse=True)


def _qkv(batch: int, heads: int, n: int, d: int, dtype: torch.dtype, device: str, grad: bool):
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(batch, heads, n, d, dtype=dtype, device=device, generator=gen).requires_grad_(grad)
            for _ in range(3)]


# ---- implementations ---------------------------------------------------------------------------


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What an eager encoder does: scores in the input dtype, softmax in fp32, the full matrix in memory."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (batch, heads, n, n)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def _sdpa_backend(name: str) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
               "sdpa_math": SDPBackend.MATH}[name]

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)
    return run


def _flex(lengths: Optional[torch.Tensor], batch: int, n: int, device: str) -> Callable:
    """FlexAttention, compiled; with lengths a block mask of the real keys, so padded blocks are skipped."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # each shape compiles its own kernels; resetting keeps dynamo's recompile limit from silently
    # falling back to the eager (full-matrix) path after a few shapes
    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, dynamic=False)
    if lengths is None:
        return lambda q, k, v: compiled(q, k, v)

    def real_key(b, h, q_idx, kv_idx):
        return kv_idx < lengths[b]

    block_mask = create_block_mask(real_key, batch, None, n, n, device=device)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def dense_impl(name: str, batch: int, n: int, device: str) -> Callable:
    """(q, k, v) -> out for the dense case."""
    if name == "nanoft":
        return lambda q, k, v: kernels.attention(q, k, v, impl="triton")
    if name == "naive":
        return naive_attention
    if name == "sdpa":
        return F.scaled_dot_product_attention
    if name.startswith("sdpa_"):
        return _sdpa_backend(name)
    if name == "flex":
        return _flex(None, batch, n, device)
    raise ValueError(f"unknown impl {name!r}")


def pack(x: torch.Tensor, lengths: List[int]) -> torch.Tensor:
    """(batch, heads, n, d) padded -> (total_tokens, heads, d): the layout a packed model keeps throughout."""
    return torch.cat([x[b, :, :length].transpose(0, 1) for b, length in enumerate(lengths)], dim=0)


def padded_impl(name: str, lengths: List[int], n: int, device: str) -> Callable:
    """(q, k, v) padded to n -> out for the padded case (nanoft_varlen: packed q, k, v -> packed out)."""
    lens = torch.tensor(lengths, device=device)
    mask = torch.arange(n, device=device)[None, :] >= lens[:, None]  # (batch, n), True = padding
    # nanoft as the model calls it: inputs checked once by the attention module, then validate=False, so no
    # check reads the mask or the offsets back from the device inside the timed call
    if name == "nanoft":
        return lambda q, k, v: kernels.attention(q, k, v, key_padding_mask=mask, impl="triton", validate=False)
    if name == "nanoft_varlen":  # takes packed (total_tokens, heads, d) inputs, see pack()
        cu = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        return lambda q, k, v: kernels.varlen_attention(q, k, v, cu, n, impl="triton", validate=False)
    if name == "naive":
        return lambda q, k, v: naive_attention(q, k, v, mask)
    if name == "sdpa":
        keep = ~mask[:, None, None, :]  # (batch, 1, 1, n)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    if name == "flex":
        return _flex(lens, len(lengths), n, device)
    raise ValueError(f"unknown impl {name!r}")


# ---- measuring ---------------------------------------------------------------------------------


@dataclass
class Measure:
    """How one (impl, mode) is timed: warm up for `warm_s` (GPU clocks ramp up, autotuning and compiling
    finish), then time enough calls to fill about `measure_s`, at least `min_repeat`."""
    device: str
    warm_s: float = 0.2
    measure_s: float = 0.3
    min_repeat: int = 5


def _timed(call: Callable, m: Measure, cuda: bool) -> float:
    """Median seconds per call, each call synchronised (so CPU-side overhead counts, as it does for a user)."""
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < m.warm_s:
        call()
        if cuda:
            torch.cuda.synchronize()
        calls += 1
    first = time_it(call, warmup=0, repeat=1, sync=cuda)
    repeat = max(m.min_repeat, min(100, int(m.measure_s / max(first, 1e-6))))
    return time_it(call, warmup=0, repeat=repeat, sync=cuda)


def _measure(fn: Callable, q, k, v, mode: str, m: Measure) -> Dict:
    """Median ms and peak extra memory (MiB, CUDA only) of a forward or forward+backward call."""
    cuda = m.device.startswith("cuda")
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn(q, k, v)
    else:
        grad_out = torch.randn_like(q)

        def call():
            out = fn(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad_out)
    try:
        seconds = _timed(call, m, cuda)
        peak = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            call()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        return {"ms": seconds * 1e3, "peak_mb": peak, "status": "ok"}
    except torch.cuda.OutOfMemoryError:
        return {"ms": None, "peak_mb": None, "status": "oom"}
    except Exception as e:  # a backend that refuses a shape (e.g. flash without CUDA) is a row, not a crash
        return {"ms": None, "peak_mb": None, "status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:80]}"}
    finally:
        if cuda:
            torch.cuda.empty_cache()


def _flops(per_seq_len: Sequence[int], heads: int, d: int, mode: str) -> float:
    """Matmul FLOPs of the useful (unpadded) attention: 4 n^2 d per head forward; backward 2.5x that."""
    fwd = sum(4.0 * n * n * d * heads for n in per_seq_len)
    return fwd if mode == "fwd" else 3.5 * fwd


def run_kernel_bench(seq_lens: Sequence[int], head_dims: Sequence[int], batch: Optional[int], heads: Optional[int],
                     dtype: torch.dtype, device: str, impls: Sequence[str], modes: Sequence[str] = ("fwd", "fwd_bwd"),
                     *, tokens: int = 16384, flex_budget_s: float = 180.0,
                     progress: Optional[Callable[[Dict], None]] = None,
                     measure: Optional[Measure] = None) -> List[Dict]:
    """Dense case. batch None -> tokens // n sequences; heads None -> 2048 // d (a 2048-wide model)."""
    m = measure or Measure(device=device)
    rows: List[Dict] = []
    flex_spent = 0.0
    for d in head_dims:
        h = heads or max(1, 2048 // d)
        for n in seq_lens:
            b = batch or max(1, tokens // n)
            q, k, v = _qkv(b, h, n, d, dtype, device, grad=True)
            for name in impls:
                if name == "flex" and flex_spent > flex_budget_s:
                    continue
                started = time.perf_counter()
                fn = dense_impl(name, b, n, device)
                for mode in modes:
                    r = _measure(fn, q, k, v, mode, m)
                    tflops = _flops([n] * b, h, d, mode) / (r["ms"] * 1e-3) / 1e12 if r["ms"] else None
                    rows.append({"case": "dense", "impl": name, "mode": mode, "n": n, "d": d, "batch": b, "heads": h,
                                 "ms": r["ms"], "tflops": tflops, "peak_mb": r["peak_mb"], "status": r["status"]})
                    if progress is not None:
                        progress(rows[-1])
                if name == "flex":
                    flex_spent += time.perf_counter() - started
            del q, k, v
    _add_ratios(rows, "sdpa_flash" if "sdpa_flash" in impls else "sdpa")
    return rows


def run_padded_bench(batches: Dict[str, List[int]], head_dim: int, heads: int, dtype: torch.dtype, device: str,
                     impls: Sequence[str], modes: Sequence[str] = ("fwd", "fwd_bwd"),
                     progress: Optional[Callable[[Dict], None]] = None,
                     pad_to: Optional[Dict[str, int]] = None, measure: Optional[Measure] = None) -> List[Dict]:
    """Padded case: each batch (name -> real lengths) is padded to its longest sequence, or to pad_to[name]."""
    m = measure or Measure(device=device)
    rows: List[Dict] = []
    for label, lengths in batches.items():
        n = max(max(lengths), (pad_to or {}).get(label, 0))
        q, k, v = _qkv(len(lengths), heads, n, head_dim, dtype, device, grad=True)
        real = sum(lengths) / (len(lengths) * n)
        for name in impls:
            fn = padded_impl(name, lengths, n, device)
            inputs = (q, k, v)
            if name == "nanoft_varlen":
                inputs = [pack(t.detach(), lengths).requires_grad_() for t in (q, k, v)]
            for mode in modes:
                r = _measure(fn, *inputs, mode, m)
                tflops = _flops(lengths, heads, head_dim, mode) / (r["ms"] * 1e-3) / 1e12 if r["ms"] else None
                rows.append({"case": f"padded-{label}", "impl": name, "mode": mode, "n": n, "d": head_dim,
                             "batch": len(lengths), "heads": heads, "real_frac": real, "ms": r["ms"],
                             "tflops": tflops, "peak_mb": r["peak_mb"], "status": r["status"]})
                if progress is not None:
                    progress(rows[-1])
        del q, k, v
    _add_ratios(rows, "sdpa")
    return rows


def _add_ratios(rows: List[Dict], baseline: str) -> None:
    """speedup = baseline ms / impl ms for the same case, mode and shape (> 1: faster than the baseline)."""
    base = {(r["case"], r["mode"], r["n"], r["d"]): r["ms"] for r in rows if r["impl"] == baseline}
    for r in rows:
        b = base.get((r["case"], r["mode"], r["n"], r["d"]))
        r[f"speedup_vs_{baseline}"] = b / r["ms"] if (b and r["ms"]) else None


# ---- entry point ----------------------------------------------------------------------------------


def _result_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "kernels_cpu"
    gpu = torch.cuda.get_device_name(0).lower()
    for short in ("h200", "h100", "a100", "l4", "a10"):
        if short in gpu:
            return f"kernels_{short}"
    return "kernels_gpu"


def load_batches(lengths_file: Optional[Path], sst2_batch: int, imdb_batch: int, seed: int) -> Dict[str, List[int]]:
    """Length batches from the real data (or from a JSON file written by an earlier run)."""
    if lengths_file is not None and Path(lengths_file).exists():
        return json.loads(Path(lengths_file).read_text(encoding="utf-8"))
    return {"sst2": sample_batch(estimated_lengths("sst2"), sst2_batch, seed),
            "imdb": sample_batch(estimated_lengths("imdb"), imdb_batch, seed)}


def bench_all(device: str, *, quick: bool = False, lengths_file: Optional[Path] = None,
              out_dir: Optional[Path] = None, name: Optional[str] = None,
              progress: Optional[Callable[[Dict], None]] = None) -> Dict[str, Path]:
    """The full benchmark for one device; writes bench/results/<name>.json/.md (after each case, so a run
    cut short keeps what it measured) and returns their paths."""
    cuda = device.startswith("cuda")
    if cuda:
        seq_lens = [512, 2048, 8192] if quick else [512, 1024, 2048, 4096, 8192, 16384]
        batches = load_batches(lengths_file, 256, 32, seed=0)
    else:
        seq_lens = [128, 256] if quick else [128, 256, 512, 1024]
        batches = load_batches(lengths_file, 64, 4, seed=0)
    meta = {"dtype": "bfloat16" if cuda else "float32", "batch_lengths": json.dumps(batches),
            "flops": "useful matmul FLOPs: 4 n^2 d per sequence and head forward, x3.5 forward+backward",
            "peak_mb": "extra CUDA memory allocated during one call (inputs excluded)"}
    notes = ("Dense: 16k tokens per batch (batch = 16384 // n), heads = 2048 // d, no mask. Padded: real length "
             "batches (SST-2 phrases, IMDB reviews; lengths from whitespace words x 1.3 + 2, seeded sample) "
             "padded to the batch's longest (sst2@128: the same SST-2 batch padded to 128, a common max_length); "
             "SDPA gets a boolean mask, nanoft the mask (each row's end found on the device inside the call, "
             "nothing read back; validate=False as the attention modules call it), nanoft_varlen packed tensors "
             "(a packed model keeps that layout, so packing is not timed). "
             "Each time is the median of synchronised calls after 0.2 s of warm-up (GPU clocks ramp up from idle). "
             "Rows with status oom/error did not run.")
    columns = ["case", "impl", "mode", "n", "d", "batch", "heads", "ms", "tflops", "peak_mb", "speedup_vs_sdpa_flash",
               "speedup_vs_sdpa", "status"]
    name = name or _result_name(device)

    def save(rows: List[Dict]) -> Dict[str, Path]:
        return write_results(name, rows, meta=meta, columns=columns, out_dir=out_dir, notes=notes)

    if cuda:
        dense = run_kernel_bench(seq_lens, [64, 128], None, None, torch.bfloat16, device, GPU_IMPLS,
                                 flex_budget_s=120.0, progress=progress)
        save(dense)
        padded = run_padded_bench({**batches, "sst2@128": batches["sst2"]}, 64, 12, torch.bfloat16, device,
                                  GPU_PADDED_IMPLS, progress=progress, pad_to={"sst2@128": 128})
    else:
        dense = run_kernel_bench(seq_lens, [64], 2, 4, torch.float32, device, CPU_IMPLS, progress=progress)
        save(dense)
        padded = run_padded_bench(batches, 64, 4, torch.float32, device, CPU_IMPLS, progress=progress)
    return save(dense + padded)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--lengths-file", type=Path, default=None,
                        help="JSON {batch name: [lengths]} instead of sampling the shared data")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="result file name (default kernels_<device>)")
    args = parser.parse_args(argv)
    paths = bench_all(args.device, quick=args.quick, lengths_file=args.lengths_file, out_dir=args.out_dir,
                      name=args.name, progress=lambda row: print(json.dumps(row, default=str), flush=True))
    payload = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
    print(format_table(payload["rows"], ["case", "impl", "mode", "n", "d", "ms", "tflops", "peak_mb",
                                         "speedup_vs_sdpa_flash", "speedup_vs_sdpa", "status"]))
    print(f"wrote {paths['json']} and {paths['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
