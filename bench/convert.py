"""How far a converted model starts from its checkpoint: each attention kind vs the pretrained full attention.

    nanoft bench convert --task imdb --data-dir ../shared/data --kind linformer:k=256 --kind linformer:k=512

Converting a pretrained encoder to Linformer, Performer, Longformer or BigBird reuses Q/K/V/O but changes
what attention computes, so fine-tuning starts from a perturbed model; how much it is perturbed is what
decides how much of the pretrained knowledge the short fine-tune has to rebuild. This benchmark measures it
before any training: real texts of a task, each short enough for the checkpoint's own positions (so the
checkpoint with full attention is the exact reference), run one at a time (no padding) through the reference
and through each converted model (`--max-length` positions, tiled as training tiles them), fp32, eval mode.

Per kind: the relative error ||h - h_ref|| / ||h_ref|| of every layer's output (mean over texts; the last
layer's is the headline), and the cosine between the converted and the reference [CLS] vectors of the last
layer (mean and minimum over texts). A `full` row at the same `--max-length` checks the setup itself: it
must be exact up to float rounding. Random kinds (Performer features, BigBird's random blocks) draw from
`--seed`. `--transfer-steps N` adds, for kinds with parameters of their own (Linformer), a second row after
N batches of attention transfer (`nanoft.train.transfer`) on other texts of the task than the measured ones.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nanoft.bench.common import format_table, write_results
from nanoft.errors import ConfigError
from nanoft.train.transfer import attention_transfer, transfer_parameters

DEFAULT_KINDS = ("full", "linformer:k=128", "linformer:k=256", "linformer:k=512", "performer:num_features=256",
                 "longformer:window=256", "bigbird")


def parse_kind(spec: str) -> Tuple[str, Dict[str, Any]]:
    """'linformer:k=256,init=pooling' -> ('linformer', {'k': 256, 'init': 'pooling'})."""
    from nanoft.attention import available
    from nanoft.train.config import parse_scalar

    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in available():
        raise ConfigError(f"--kind {spec!r}: unknown attention kind {name!r}",
                          fix=f"use one of: {', '.join(available())}, optionally with :KEY=VALUE,...")
    options: Dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--kind {spec!r}: {item!r} is not KEY=VALUE", fix="e.g. --kind linformer:k=256")
        options[key.strip()] = parse_scalar(raw.strip())
    return name, options


def layer_outputs(model: torch.nn.Module, ids: torch.Tensor) -> List[torch.Tensor]:
    """Every encoder layer's output `(seq, hidden)` for one unpadded sequence `(1, seq)`."""
    outputs: List[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0].detach()))
             for layer in model.encoder.layers]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def fidelity(reference: List[List[torch.Tensor]], converted: List[List[torch.Tensor]]) -> Dict[str, Any]:
    """Per-layer relative error (mean over texts) and last-layer [CLS] cosine (mean, min) of `converted`."""
    layers = len(reference[0])
    errors = np.zeros((len(reference), layers))
    cosines = []
    for t, (ref, got) in enumerate(zip(reference, converted)):
        for i in range(layers):
            errors[t, i] = float((got[i] - ref[i]).norm() / ref[i].norm())
        cosines.append(float(torch.nn.functional.cosine_similarity(got[-1][0], ref[-1][0], dim=0)))
    return {"rel_error_last": float(errors[:, -1].mean()), "rel_error_by_layer": errors.mean(axis=0).tolist(),
            "cls_cosine_mean": float(np.mean(cosines)), "cls_cosine_min": float(np.min(cosines))}


def pick_texts(texts: Sequence[str], tokenizer: Any, count: int, limit: int,
               seed: int) -> Tuple[List[List[int]], set]:
    """`count` token-id lists (seeded order) of texts that fit `limit` tokens untruncated, and their indices."""
    order = np.random.default_rng(seed).permutation(len(texts))
    chosen: List[List[int]] = []
    picked = set()
    for i in order:
        ids, _ = tokenizer.encode(texts[int(i)], max_length=None)
        if len(ids) <= limit:
            chosen.append(ids)
            picked.add(int(i))
            if len(chosen) == count:
                break
    if not chosen:
        raise ConfigError(f"no text fits the checkpoint's {limit} positions untruncated",
                          fix="pick a task with shorter texts, or a checkpoint with more positions")
    return chosen, picked


def transfer_batches(texts: Sequence[str], tokenizer: Any, max_length: int, batch_size: int,
                     seed: int) -> Iterator[Dict[str, torch.Tensor]]:
    """Endless padded batches of `texts` (length-sorted chunks, seeded) for attention transfer."""
    from nanoft.train.transfer import length_sorted_batches

    ids, _ = tokenizer.encode_batch(list(texts), max_length=max_length)
    for indices in length_sorted_batches([len(row) for row in ids], batch_size, seed):
        width = max(len(ids[i]) for i in indices)
        input_ids = torch.full((len(indices), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(indices), width, dtype=torch.long)
        for row, i in enumerate(indices):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        yield {"input_ids": input_ids, "attention_mask": mask}


def run_convert_bench(kinds: Sequence[str], texts: Sequence[str], model: Optional[str] = None, examples: int = 32,
                      max_length: int = 2048, seed: int = 0, transfer_steps: int = 0, transfer_lr: float = 1e-3,
                      transfer_texts: int = 512, transfer_batch: int = 8) -> Dict[str, Any]:
    """Rows (one per kind) of conversion fidelity on `texts`; see the module docstring. With `transfer_steps`,
    kinds with parameters of their own are also measured after attention transfer on `transfer_texts` other
    texts of the same list (never the measured ones)."""
    from nanoft import load_model, load_tokenizer
    from nanoft.progress import ProgressBar

    parsed = [parse_kind(k) for k in kinds]
    torch.manual_seed(seed)
    base = load_model(model, head=None, unpad=False).eval()
    tokenizer = load_tokenizer(model)
    limit = base.config.max_position_embeddings - int(base.config.family == "roberta") * 2  # RoBERTa offsets by 2
    if max_length < limit:
        raise ConfigError(f"--max-length {max_length} is below the checkpoint's {limit} positions",
                          fix=f"use --max-length {limit} or more (the converted models' length)")
    token_ids, picked = pick_texts(texts, tokenizer, examples, limit, seed)
    others = [t for i, t in enumerate(texts) if i not in picked][:transfer_texts]
    batches = [torch.tensor([ids]) for ids in token_ids]
    reference = [layer_outputs(base, ids) for ids in batches]
    rows = []
    bar = ProgressBar(len(parsed) * len(batches), desc="convert")
    for spec, (kind, options) in zip(kinds, parsed):
        torch.manual_seed(seed)
        converted = load_model(model, head=None, attention=kind, attention_options=options or None,
                               max_length=max_length, unpad=False).eval()
        outputs = []
        for ids in batches:
            outputs.append(layer_outputs(converted, ids))
            bar.update(1)
        rows.append({"kind": spec, "transfer_steps": 0, **fidelity(reference, outputs)})
        if transfer_steps and transfer_parameters(converted):
            if not others:
                raise ConfigError("no texts left for attention transfer besides the measured ones",
                                  fix="give more texts or fewer --examples")
            report = attention_transfer(converted, transfer_batches(others, tokenizer, max_length, transfer_batch,
                                                                    seed), transfer_steps, transfer_lr)
            outputs = [layer_outputs(converted, ids) for ids in batches]
            rows.append({"kind": spec, "transfer_steps": report["steps"], **fidelity(reference, outputs)})
    bar.close()
    lengths = [len(ids) for ids in token_ids]
    return {"rows": rows, "texts": len(token_ids), "tokens_mean": float(np.mean(lengths)),
            "tokens_max": int(max(lengths)), "limit": limit}


def task_texts(task: str, data_dir: Optional[str]) -> List[str]:
    """The train texts (first text column) of a task."""
    from nanoft.tasks import get_task

    return list(get_task(task).load(data_dir, "train").texts)


def read_texts(path: str) -> List[str]:
    """Non-empty lines of a UTF-8 text file; a missing or undecodable file is one clear error."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise ConfigError("text file does not exist", path=str(file), fix="pass a UTF-8 file, one text per line")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 at byte {e.start}", path=str(file), fix="save the file as UTF-8") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise ConfigError("text file holds no text", path=str(file), fix="one text per line")
    return texts


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="nanoft bench convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="imdb", help="task whose train texts are used (first text column)")
    p.add_argument("--data-dir", default=None, help="data folder [default: $NANOFT_DATA_DIR]")
    p.add_argument("--text-file", default=None, help="instead of --task: a UTF-8 file, one text per line")
    p.add_argument("--model", default=None, help="checkpoint [default: installed MiniLM]")
    p.add_argument("--kind", action="append", dest="kinds", default=None,
                   help=f"KIND[:KEY=VALUE,...], repeatable [default: {' '.join(DEFAULT_KINDS)}]")
    p.add_argument("--examples", type=int, default=32, help="texts (those that fit the checkpoint's positions)")
    p.add_argument("--max-length", type=int, default=2048, help="positions of the converted models (tiled)")
    p.add_argument("--seed", type=int, default=0, help="text sample and random attention features")
    p.add_argument("--transfer-steps", type=int, default=0,
                   help="also measure kinds with parameters of their own (Linformer) after this many attention-"
                        "transfer batches on other texts of the task (0: off)")
    p.add_argument("--transfer-lr", type=float, default=1e-3, help="attention transfer: Adam learning rate")
    p.add_argument("--transfer-batch", type=int, default=8, help="attention transfer: texts per batch")
    p.add_argument("--name", default=None, help="result file name in --out-dir (none: print only)")
    p.add_argument("--out-dir", default=None, help="result folder [default: bench/results]")
    args = p.parse_args(argv)
    if args.examples < 1:
        raise ConfigError(f"--examples must be ≥ 1, got {args.examples}")
    kinds = args.kinds or list(DEFAULT_KINDS)
    for spec in kinds:  # a typo fails before any data or model is read
        parse_kind(spec)
    texts = read_texts(args.text_file) if args.text_file else task_texts(args.task, args.data_dir)
    result = run_convert_bench(kinds, texts, args.model, args.examples, args.max_length, args.seed,
                               args.transfer_steps, args.transfer_lr, transfer_batch=args.transfer_batch)
    rows = [{"kind": r["kind"], "transfer_steps": r["transfer_steps"], "rel_error_last": round(r["rel_error_last"], 4),
             "rel_error_first": round(r["rel_error_by_layer"][0], 4),
             "cls_cosine_mean": round(r["cls_cosine_mean"], 4), "cls_cosine_min": round(r["cls_cosine_min"], 4),
             "rel_error_by_layer": [round(e, 4) for e in r["rel_error_by_layer"]]} for r in result["rows"]]
    columns = ["kind", "transfer_steps", "rel_error_first", "rel_error_last", "cls_cosine_mean", "cls_cosine_min"]
    print(format_table(rows, columns))
    if args.name:
        meta = {"task": args.task, "model": args.model or "installed MiniLM-L6-H384", "texts": result["texts"],
                "tokens_mean": round(result["tokens_mean"], 1), "tokens_max": result["tokens_max"],
                "max_length": args.max_length, "seed": args.seed, "transfer_lr": args.transfer_lr,
                "transfer_batch": args.transfer_batch,
                "reference": f"the checkpoint with full attention at its own {result['limit']} positions"}
        paths = write_results(args.name, rows, meta=meta, columns=columns, out_dir=args.out_dir)
        print(f"wrote {paths['json']} and {paths['markdown']}")
