"""Unpadded vs padded encoder: training examples/s with the very same batches, in one run.

Two Trainers that differ only in `unpad` (MiniLM-L6, batch 32, AdamW, clipping 1.0) take the same
sampler batches; their steps alternate (off, on, on, off, ...), so a load spike on a shared machine
hits both sides alike and only the ratio is read. Per task x sampler x precision: examples/s with and
without unpadding, and how much of the padded batch was padding.

A second table times the ways to attend over packed sequences on this device (MiniLM's 12 heads of 32,
the same batches' lengths, forward + backward): one SDPA call per sequence, nested (jagged) tensors,
one SDPA over the packed batch with a block-diagonal mask, and SDPA on a padded copy laid out on the
device (what `nanoft.kernels.varlen_attention` does off CUDA), beside the padded path's SDPA.

    nanoft bench unpad --tasks sst2,agnews --samplers random,bucket --precision fp32,bf16 --steps 24
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nanoft.bench.common import RESULTS_DIR, cpu_features, format_table, write_results

HEADS, HEAD_DIM = 12, 32  # MiniLM-L6-H384


def _trainers(task: str, sampler: str, precision: str, args: argparse.Namespace, tmp: str) -> Dict[bool, Any]:
    from nanoft.train import TrainConfig, Trainer

    trainers = {}
    for unpad in (False, True):
        config = TrainConfig(task=task, data_dir=args.data_dir, model=args.model, batch_size=args.batch_size,
                             max_steps=args.steps + args.warmup, train_subset=args.subset, sampler=sampler,
                             precision=precision, seed=args.seed, output=str(Path(tmp) / f"{task}-{unpad}"),
                             quiet=True, save_best=False, unpad=unpad)
        torch.manual_seed(args.seed)
        trainers[unpad] = Trainer(config, device=args.device, progress=False)
    return trainers


def train_rows(task: str, sampler: str, precision: str, args: argparse.Namespace) -> Dict[str, Any]:
    """One row: both sides' examples/s over the same `args.steps` batches, after `args.warmup` untimed ones."""
    with tempfile.TemporaryDirectory() as tmp:
        trainers = _trainers(task, sampler, precision, args, tmp)
        base = trainers[False]
        base.sampler.set_epoch(0)
        groups = [g for _, g in zip(range(args.warmup + args.steps), base._step_groups())]
        seconds = {False: 0.0, True: 0.0}
        examples = real = padded = 0
        for i, group in enumerate(groups):
            for unpad in ((False, True) if i % 2 == 0 else (True, False)):
                start = time.perf_counter()
                trainers[unpad].train_step(group)
                if i >= args.warmup:
                    seconds[unpad] += time.perf_counter() - start
            if i >= args.warmup:
                lengths = base.train_data.lengths[np.concatenate(group)]
                examples += len(lengths)
                real += int(lengths.sum())
                padded += sum(len(g) * int(base.train_data.lengths[g].max()) for g in group)
    off, on = examples / seconds[False], examples / seconds[True]
    return {"task": task, "sampler": sampler, "precision": precision, "steps": args.steps, "examples": examples,
            "padding_share": round(1 - real / padded, 3), "padded_ex_per_s": round(off, 1),
            "unpadded_ex_per_s": round(on, 1), "speedup": round(on / off, 3)}


# ------------------------------------------------------------------------------ packed attention
def _attention_ways(lengths: torch.Tensor) -> Dict[str, Callable[..., torch.Tensor]]:
    """Each way to attend over packed (total, heads, d) tokens of sequences of `lengths`."""
    from nanoft import kernels

    batch, width = len(lengths), int(lengths.max())
    cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    bounds = cu.tolist()
    seq_of = torch.repeat_interleave(torch.arange(batch), lengths)  # (total,)
    block_diagonal = seq_of[:, None] == seq_of[None, :]  # (total, total), True = same sequence

    def loop(q, k, v):
        return torch.cat([F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)))[0]
                          .transpose(0, 1) for a, b in zip(bounds[:-1], bounds[1:])])

    def nested(q, k, v):
        q, k, v = (torch.nested.nested_tensor_from_jagged(t, cu.long()).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).values()

    def block_diag(q, k, v):
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, heads, total, d)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=block_diagonal)[0].transpose(0, 1)

    def padded_copy(q, k, v):
        return kernels.varlen_attention(q, k, v, cu, width, impl="sdpa", validate=False)

    return {"per-sequence SDPA loop": loop, "nested (jagged) tensors": nested,
            "block-diagonal mask": block_diag, "padded copy on device (nanoft)": padded_copy}


def _time_fwd_bwd(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> float:
    leaves = [t.detach().requires_grad_() for t in inputs]
    start = time.perf_counter()
    fn(*leaves).sum().backward()
    return time.perf_counter() - start


def attention_rows(task: str, sampler: str, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Median ms (forward + backward) of every way, interleaved over `args.attention_batches` real batches."""
    from nanoft.train import TrainConfig
    from nanoft.train import build
    from nanoft.weights import load_tokenizer

    config = TrainConfig(task=task, data_dir=args.data_dir, model=args.model, batch_size=args.batch_size,
                         train_subset=args.subset, sampler=sampler, seed=args.seed).validate()
    data = build.encode_split(config, build.load_task(config), load_tokenizer(config.model), "train", args.subset)
    sampler_ = build.make_sampler(config, data.lengths, 1)
    sampler_.set_epoch(0)
    times: Dict[str, List[float]] = {}
    gen = torch.Generator().manual_seed(args.seed)
    for _, indices in zip(range(args.attention_batches), sampler_):
        lengths = torch.as_tensor(data.lengths[np.asarray(indices)], dtype=torch.long)
        total, batch, width = int(lengths.sum()), len(lengths), int(lengths.max())
        packed = [torch.randn(total, HEADS, HEAD_DIM, generator=gen) for _ in range(3)]
        mask = torch.arange(width)[None, :] >= lengths[:, None]  # (batch, width), True = padding
        rows = torch.cat([torch.arange(n) + b * width for b, n in enumerate(lengths.tolist())])
        padded = [t.new_zeros(batch * width, HEADS, HEAD_DIM).index_copy(0, rows, t)
                  .view(batch, width, HEADS, HEAD_DIM).transpose(1, 2).contiguous() for t in packed]
        ways = dict(_attention_ways(lengths))
        ways["padded batch, SDPA with mask (unpad off)"] = None
        for repeat in range(args.attention_repeats):
            for name, fn in ways.items():
                if fn is None:
                    t = _time_fwd_bwd(lambda q, k, v: F.scaled_dot_product_attention(
                        q, k, v, attn_mask=~mask[:, None, None, :]), padded)
                else:
                    t = _time_fwd_bwd(fn, packed)
                if repeat > 0:  # the first round warms caches and allocators
                    times.setdefault(name, []).append(t)
    return [{"task": task, "sampler": sampler, "way": name, "median_ms": round(float(np.median(ts)) * 1e3, 2)}
            for name, ts in times.items()]


# ------------------------------------------------------------------------------ driver
def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nanoft bench unpad", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", default="sst2,agnews", help="comma-separated tasks")
    p.add_argument("--samplers", default="random,bucket", help="comma-separated: random, bucket")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--steps", type=int, default=24, help="timed optimizer steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--subset", type=int, default=2000, help="training examples drawn from each task (seeded)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    p.add_argument("--attention-batches", type=int, default=8, help="batches timed in the attention table")
    p.add_argument("--attention-repeats", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="model directory [default: installed MiniLM]")
    p.add_argument("--data-dir", default=os.environ.get("NANOFT_DATA_DIR"), help="data folder")
    p.add_argument("--name", default=None, help="result file name [default: unpad_<device>]")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    tasks, samplers, precisions = split(args.tasks), split(args.samplers), split(args.precision)

    rows = []
    for task in tasks:
        for sampler in samplers:
            for precision in precisions:
                rows.append(train_rows(task, sampler, precision, args))
                print(json.dumps(rows[-1]), flush=True)
    attention = [row for task in tasks for sampler in samplers for row in attention_rows(task, sampler, args)]
    columns = ["task", "sampler", "precision", "steps", "examples", "padding_share", "padded_ex_per_s",
               "unpadded_ex_per_s", "speedup"]
    print(format_table(rows, columns))
    print(format_table(attention, ["task", "sampler", "way", "median_ms"]))
    meta = {"device": args.device, "model": args.model or "installed MiniLM-L6-H384", "batch_size": args.batch_size,
            "train_subset": args.subset, "seed": args.seed, "warmup_steps": args.warmup,
            "torch_threads": torch.get_num_threads(),
            "cpu_features": ", ".join(k for k, v in cpu_features().items() if v) or "none"}
    notes = ("Both sides train on the same batches (dropout on, as in a real run), steps interleaved; speedup = "
             "unpadded / padded examples/s. padding_share: pad tokens / all tokens of the padded batches.\n\n"
             "Packed attention, forward + backward, 12 heads x 32, median ms over the same batches' lengths:\n\n"
             + format_table(attention, ["task", "sampler", "way", "median_ms"], markdown=True))
    paths = write_results(args.name or f"unpad_{args.device}", rows, meta=meta, columns=columns,
                          out_dir=args.out_dir, notes=notes)
    payload = json.loads(paths["json"].read_text(encoding="utf-8"))
    payload["attention_rows"] = attention  # the second table, machine-readable
    paths["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
