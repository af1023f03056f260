"""Training across machines under `torchrun`: elastic restarts and a run directory every rank can see.

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             --rdzv-id JOB --max-restarts 3 $(which nanoft) train ...

Rank 0 writes the run directory; the other ranks read it too (the checkpoint they resume from), so it
must be on storage every machine mounts at the same path. `check_shared` proves that at the start of
every attempt: rank 0 writes `launch.json` with a fresh random token, every other rank reads the token
back, and if any cannot, all ranks stop with one line naming them.

When a worker dies, torchrun stops the others and starts a new attempt with TORCHELASTIC_RESTART_COUNT
> 0 (only on the machines whose agent counted a failure, so the ranks take the largest count). `start`
then continues from the last complete checkpoint with no --resume to remember, or, if the dead attempt
saved none, starts over on top of what it left. It does so only when `launch.json` says the previous
attempt of the same torchrun job (same --rdzv-id) opened this run directory; an attempt that died
before that point leaves the command's own flags in charge (e.g. --overwrite of an older run). What the
dead attempt did after its last checkpoint is replayed exactly: data order, every rank's RNG streams,
optimizer and schedule all come from the checkpoint. The dead rank 0's lock was dropped by the kernel
with its process; on a network filesystem a crashed machine's lock lingers until the server's lease
ends, so a restarted rank 0 waits up to `LOCK_WAIT_S` for it. The new processes build a new process
group on the rendezvous torchrun hands them; nothing of the old one survives.

A restart with another number of processes (an elastic --nnodes MIN:MAX) keeps the per-process batch of
the command line, so it changes the global batch and is refused (`RunDir.check_resume_compatible`);
a manual resume that keeps the global batch (--batch-size scaled) is allowed and continues on the same
global batches.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

from nanoft.errors import ConfigError
from nanoft.train import distributed
from nanoft.train.distributed import DistInfo
from nanoft.train.rundir import STATE_JSON, RunDir

log = logging.getLogger(__name__)

LOCK_WAIT_S = 120.0   # a restarted rank 0 waits this long for a dead machine's lock (NFS lease)
VISIBLE_WAIT_S = 5.0  # other ranks retry this long before they call rank 0's files missing (NFS caches)
SHARED_FIX = "put --output on storage every machine mounts at the same path (see docs/cluster.md)"


def start(run_dir: RunDir, config: Any, dist: DistInfo) -> Any:
    """The config this attempt runs with: `--resume` on after a torchrun restart when a checkpoint exists,
    `--overwrite` when the dead attempt saved none. Rank 0 checks the run directory (creating nothing);
    every rank gets its verdict, and on resume every rank must see rank 0's checkpoint."""
    attempt = max(distributed.all_gather_objects(dist.restart_count, dist))

    def decide() -> tuple:
        overwrite, resume = config.overwrite, config.resume
        if attempt > 0 and restarted_here(run_dir, dist.run_id):
            wait_for_lock(run_dir)
            resume = run_dir.find_checkpoint() is not None
            overwrite = not resume
            log.warning("torchrun restart %d: %s", attempt,
                        "resuming from the last checkpoint" if resume else "no checkpoint yet, starting over")
        run_dir.check(overwrite=overwrite, resume=resume)
        return overwrite, resume, fingerprint(run_dir) if resume else None, _resolved(run_dir)

    overwrite, resume, expected, where = distributed.on_main(decide, dist)
    if resume and dist.enabled:
        _all_see(dist, lambda: fingerprint(run_dir) == expected, "checkpoint", where)
    if (overwrite, resume) != (config.overwrite, config.resume):
        config = config.replace(overwrite=overwrite, resume=resume)
    return config


def restarted_here(run_dir: RunDir, run_id: str) -> bool:
    """True when an earlier attempt of this torchrun job (same run id) opened `run_dir`. (Attempts are not
    numbered reliably: each agent counts only its own failures, so the largest count may repeat.)"""
    launch = run_dir.read_launch()
    return launch is not None and launch.get("run_id") == run_id


def wait_for_lock(run_dir: RunDir, timeout: Optional[float] = None) -> bool:
    """Wait (up to `timeout`, default LOCK_WAIT_S) until no live process holds the run's lock: True once it is
    free, False if the time ran out first (the caller's open then says who holds it)."""
    deadline = time.monotonic() + (LOCK_WAIT_S if timeout is None else timeout)
    while run_dir.lock_holder() is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    return run_dir.lock_holder() is None


def fingerprint(run_dir: RunDir) -> Optional[str]:
    """SHA-256 of the checkpoint's state file (written last, names every file's size); None if unreadable."""
    try:
        return hashlib.sha256((run_dir.checkpoint / STATE_JSON).read_bytes()).hexdigest()
    except OSError:
        return None


def check_shared(run_dir: RunDir, dist: DistInfo, config: Any) -> None:
    """After rank 0 opened the run directory: record this attempt in launch.json (under torchrun) and make
    sure every rank reads back rank 0's token; else every rank raises one ConfigError naming those that cannot."""
    if not (dist.launched or dist.enabled or run_dir.read_launch() is not None):
        return  # a plain single process; but a torchrun run resumed by one keeps its launch.json current
    hosts = distributed.all_gather_objects(socket.gethostname(), dist)
    attempt = max(distributed.all_gather_objects(dist.restart_count, dist))

    def announce() -> tuple:
        token = secrets.token_hex(16)
        run_dir.write_launch({
            "token": token, "run_id": dist.run_id, "restart_count": attempt, "world_size": dist.world_size,
            "nodes": dist.nodes, "processes_per_node": dist.local_world_size, "hosts": sorted(set(hosts)),
            "batch_size": config.batch_size, "max_tokens": config.max_tokens, "rank0_pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return token, _resolved(run_dir)

    token, where = distributed.on_main(announce, dist)
    if dist.enabled:
        _all_see(dist, lambda: (run_dir.read_launch() or {}).get("token") == token, "run directory", where, hosts)


def _resolved(run_dir: RunDir) -> str:
    return str(Path(run_dir.path).resolve())


def _all_see(dist: DistInfo, sees: Callable[[], bool], what: str, where: str,
             hosts: Optional[List[str]] = None) -> None:
    """Every rank evaluates `sees()` (retrying a few seconds); all raise if any rank answered False."""
    ok = True
    if not dist.is_main:
        deadline = time.monotonic() + VISIBLE_WAIT_S
        while not (ok := sees()) and time.monotonic() < deadline:
            time.sleep(0.2)
    answers = distributed.all_gather_objects(ok, dist)
    blind = [rank for rank, answer in enumerate(answers) if not answer]
    if not blind:
        return
    hosts = hosts or distributed.all_gather_objects(socket.gethostname(), dist)
    names = ", ".join(f"{r} (host {hosts[r]})" for r in blind)
    raise ConfigError(f"rank{'s' if len(blind) > 1 else ''} {names} cannot see rank 0's {what} "
                      f"(rank 0 on host {hosts[0]})", path=where, fix=SHARED_FIX)


__all__ = ["start", "check_shared", "restarted_here", "wait_for_lock", "fingerprint", "LOCK_WAIT_S"]
