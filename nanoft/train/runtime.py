"""Where and how a run executes: device, process group, precision, seeds, RNG state, peak memory, versions."""
from __future__ import annotations

import random
import signal
import threading
import resource
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from nanoft.train import distributed
from nanoft.train.precision import resolve_precision


@dataclass
class Runtime:
    """The device a run trains on, its process group (one process: world size 1) and its precision."""
    device: torch.device
    dist: distributed.DistInfo
    precision: str

    @classmethod
    def create(cls, device: Optional[str], precision: str) -> "Runtime":
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dist = distributed.setup(dev.type)
        if dev.type == "cuda" and dist.enabled:
            dev = torch.device("cuda", dist.local_rank)  # each process on its own GPU
        return cls(dev, dist, resolve_precision(precision, dev))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(dist: Optional[distributed.DistInfo] = None) -> Dict[str, Any]:
    """Every generator a training step draws from (Python, NumPy, torch CPU and CUDA).

    Under data parallelism the ranks' streams part (each draws dropout masks for its own slice of the
    batch), so the state is rank 0's plus every rank's under "ranks" for `set_rng_state` to give each
    rank its own back. Then it is a collective: every rank calls it."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if dist is not None and dist.enabled:
        state = {**state, "ranks": distributed.all_gather_objects(state, dist)}
    return state


def set_rng_state(state: Dict[str, Any], dist: Optional[distributed.DistInfo] = None) -> None:
    """Restore `rng_state`'s generators: this rank's own when the state has one per rank of this world
    size, else the top-level (rank 0's) state."""
    ranks = state.get("ranks")
    if dist is not None and isinstance(ranks, list) and len(ranks) == dist.world_size \
            and isinstance(ranks[dist.rank], dict):
        state = ranks[dist.rank]
    python = state["python"]  # (version, tuple of 625 ints, gauss_next); JSON gives lists back
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since `reset_peak_memory`: CUDA's peak allocation, or on CPU this process's peak
    resident set size (VmHWM in /proc/self/status).

    Not getrusage's ru_maxrss where /proc exists: Linux floors ru_maxrss at the peak of the memory the
    process had before its exec, which for a subprocess is its parent's (vfork: the parent's peak, fork:
    its RSS at the fork), and clear_refs does not lower that floor: a fresh subprocess of a large process
    would report the parent's peak as its own."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # "VmHWM:   123456 kB"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_memory(device: Optional[torch.device] = None) -> bool:
    """Start a new peak for `peak_memory_mb`, so several runs in one process each report their own.

    CUDA: torch's peak statistics. CPU: Linux resets the process's peak RSS when "5" is written to
    /proc/self/clear_refs; returns False where that is not possible (the peak then covers the process)."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def versions() -> Dict[str, str]:
    import nanoft

    out = {"nanoft": nanoft.__version__, "torch": torch.__version__}
    try:
        import tokenizers

        out["tokenizers"] = tokenizers.__version__
    except ImportError:
        pass
    return out


class StopSignals:
    """While active, SIGINT/SIGTERM only set `received`: the loop checkpoints at the next step and stops."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
