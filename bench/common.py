"""Shared pieces of every benchmark: environment facts, timing, aligned tables, result files.

A result file is JSON (machine-readable) plus Markdown (human-readable) in `bench/results/`, each
carrying the device, the library versions and the exact command that produced it, so a number
in the README can always be traced back and reproduced.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


import torch

from nanoft.experiment import difference, mean_std_max
from nanoft.io import atomic_write_text
from nanoft.tables import format_rows
from nanoft.train.precision import cpu_flags

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_features() -> Dict[str, bool]:
    """The CPU features that decide which precision is fast (read from /proc/cpuinfo on Linux)."""
    flags = cpu_flags()
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> Dict[str, Any]:
    """Device and versions, stored beside every result."""
    env: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_features": cpu_features(),
    }
    for name in ("triton", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "unknown")
        except Exception:  # an optional package that is absent or broken is simply not listed
            continue
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        try:
            import subprocess

            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            pass
    return env


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_it(fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 3, sync: bool = False) -> float:
    """Median seconds of `fn()` over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def format_table(rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None,
                 markdown: bool = False) -> str:
    """Rows of dicts as an aligned text table (or a Markdown table), numbers right-aligned."""
    return format_rows(rows, columns, "markdown" if markdown else "table")


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), as `nanoft report` aggregates seeds."""
    stats = mean_std_max([float(v) for v in values])
    return stats["mean"], stats["std"]


def compare(ours: Sequence[float], reference: Sequence[float]) -> Dict[str, Optional[float]]:
    """Difference of means (ours - reference), its standard error, Welch's t and its degrees of freedom."""
    return difference([float(v) for v in ours], [float(v) for v in reference])


def write_results(name: str, rows: Sequence[Dict[str, Any]], *, meta: Optional[Dict[str, Any]] = None,
                  columns: Optional[Sequence[str]] = None, out_dir: Optional[Path] = None,
                  notes: str = "") -> Dict[str, Path]:
    """Write `<name>.json` and `<name>.md` with rows, environment and the command line."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    command = shlex.join("nanoft" if i == 0 and a.endswith("nanoft") else a for i, a in enumerate(sys.argv))
    payload = {"name": name, "command": command, "environment": environment(), "meta": meta or {},
               "rows": list(rows), "notes": notes}
    json_path = out_dir / f"{name}.json"
    md_path = out_dir / f"{name}.md"
    atomic_write_text(json_path, json.dumps(payload, indent=2, default=str) + "\n")
    env = payload["environment"]
    device = env.get("gpu") or env.get("cpu")
    md = [f"# {name}", "", f"Command: `{command}`", "",
          f"Device: {device}; torch {env.get('torch')}"
          + (f", triton {env['triton']}" if "triton" in env else "")
          + (f", transformers {env['transformers']}" if "transformers" in env else ""), ""]
    if meta:
        md += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    md.append(format_table(rows, columns, markdown=True))
    if notes:
        md += ["", notes]
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return {"json": json_path, "markdown": md_path}
