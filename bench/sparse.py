"""Pruned-encoder inference: dense matmuls vs torch.sparse CSR matmuls at several sparsities (CPU),
and 2:4 semi-structured (`to_sparse_semi_structured`) where a CUDA GPU is present.

    nanoft bench sparse [--sparsities 0.5,0.8,0.9,0.95] [--batch 8] [--length 128] [--threads 1]

The encoder's linear weights are pruned by one-shot magnitude (uniform, per matrix); the dense row runs
the pruned model as is (zeros multiplied like any number), the CSR row replaces every pruned linear by a
CSR matrix times the activations. Both see the same weights, so their outputs must agree (max |diff|
is reported). Rows where CSR is slower than dense are reported as they are.
"""
from __future__ import annotations

import argparse
import copy
import warnings
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from nanoft.bench.common import environment, format_table, time_it, write_results


class CSRLinear(nn.Module):
    """y = x Wᵀ + b with W stored as a CSR matrix: (W @ xᵀ)ᵀ, x flattened to (tokens, in)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and measured here
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])                                # (tokens, in)
        y = torch.sparse.mm(self.weight, flat.t()).t()                   # (tokens, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def to_csr(model: nn.Module, names: List[str]) -> nn.Module:
    """A copy of `model` whose linear layers `names` (module paths) compute with CSR weights."""
    model = copy.deepcopy(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, CSRLinear(getattr(owner, child)))
    return model


def semi_structured_row(model: nn.Module, names: List[str], ids: torch.Tensor, repeat: int) -> Dict[str, Any]:
    """2:4 on CUDA in fp16: dense vs `to_sparse_semi_structured` weights (the only device torch supports)."""
    from torch.sparse import to_sparse_semi_structured

    from nanoft import sparse

    model = copy.deepcopy(model).cuda().half().eval()
    pruner = sparse.build("2:4", model, sparse.SparsityOptions())
    pruner.setup()
    ids = ids.cuda()
    with torch.inference_mode():
        reference = model(ids).float()
        dense = time_it(lambda: model(ids), repeat=repeat, sync=True)
        for name in names:
            layer = model.get_submodule(name)
            layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)
        semi = time_it(lambda: model(ids), repeat=repeat, sync=True)
        diff = float((model(ids).float() - reference).abs().max())
    return {"sparsity": "2:4", "format": "semi-structured (CUDA fp16)", "dense_ms": round(dense * 1e3, 3),
            "sparse_ms": round(semi * 1e3, 3), "speedup": round(dense / semi, 3), "max_abs_diff": diff}


def run(sparsities: List[float], batch: int, length: int, repeat: int, model_dir: Optional[str]) -> Dict[str, Any]:
    from nanoft import sparse
    from nanoft.weights import default_model_path, load_model

    path = model_dir or default_model_path()
    base = load_model(path, head=None).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, base.config.vocab_size, (batch, length), generator=g)
    rows: List[Dict[str, Any]] = []
    with torch.inference_mode():
        dense_time = time_it(lambda: base(ids), repeat=repeat)
    rows.append({"sparsity": 0.0, "format": "dense", "dense_ms": round(dense_time * 1e3, 3), "sparse_ms": None,
                 "speedup": None, "max_abs_diff": 0.0})
    for s in sparsities:
        model = copy.deepcopy(base)
        pruner = sparse.build("magnitude", model, sparse.SparsityOptions(sparsity=s))
        pruner.setup()
        names = [n[:-len(".weight")] for n in pruner.weights]
        csr = to_csr(model, names)
        with torch.inference_mode():
            reference = model(ids)
            dense = time_it(lambda: model(ids), repeat=repeat)
            sparse_time = time_it(lambda: csr(ids), repeat=repeat)
            diff = float((csr(ids) - reference).abs().max())
        rows.append({"sparsity": s, "format": "CSR (torch.sparse.mm)", "dense_ms": round(dense * 1e3, 3),
                     "sparse_ms": round(sparse_time * 1e3, 3), "speedup": round(dense / sparse_time, 3),
                     "max_abs_diff": diff})
    gpu = "no CUDA device: 2:4 semi-structured not measured (torch supports it on CUDA only)"
    if torch.cuda.is_available():
        try:
            names = [n for n, m in base.encoder.named_modules() if isinstance(m, nn.Linear)]
            rows.append(semi_structured_row(base, [f"encoder.{n}" for n in names], ids, repeat))
            gpu = torch.cuda.get_device_name(0)
        except (RuntimeError, ImportError) as e:  # an older GPU or build without semi-structured kernels
            gpu = f"2:4 not measured: {str(e).splitlines()[0]}"
    meta = {"model": str(path), "batch": batch, "length": length, "repeat": repeat,
            "threads": torch.get_num_threads(), "pruned": "every encoder linear weight (one-shot magnitude)",
            "gpu": gpu}
    return {"rows": rows, "meta": meta}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model", default=None, help="model directory (default: the installed MiniLM)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write bench/results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run([float(x) for x in args.sparsities.split(",") if x.strip()], args.batch, args.length,
                 args.repeat, args.model)
    print(format_table(result["rows"]))
    print(result["meta"])
    if not args.no_write:
        name = "sparse_gpu" if torch.cuda.is_available() else "sparse_cpu"
        notes = ("speedup = dense ms / sparse ms (> 1: sparse is faster). Unstructured CSR matmuls on CPU "
                 "pay index overhead; they only win at high sparsity, if at all. Threads: "
                 f"{torch.get_num_threads()} of {environment()['cpu_count']} (a shared machine).")
        paths = write_results(name, result["rows"], meta=result["meta"], notes=notes)
        print(f"wrote {paths['json']} and {paths['markdown']}")


if __name__ == "__main__":
    main()
