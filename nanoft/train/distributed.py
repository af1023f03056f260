"""Data-parallel training under `torchrun`: process group setup, rank helpers, gathering.

Each process reads RANK / WORLD_SIZE / LOCAL_RANK (and, on several machines, GROUP_RANK /
GROUP_WORLD_SIZE; after an elastic restart TORCHELASTIC_RESTART_COUNT) from the environment torchrun
sets; gloo on CPU, nccl on CUDA, each process on the GPU of its local rank. Rank 0 alone logs and
writes the run directory. A decision only rank 0 can make (does the run directory exist?) goes
through `on_main`, so that every rank gets the same answer or the same error: a rank that failed
alone would leave the others waiting in their next collective until the timeout.
"""
from __future__ import annotations

import datetime
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Type, TypeVar

import torch
import torch.distributed as dist

from nanoft.errors import ConfigError, NanoftError

T = TypeVar("T")


@dataclass
class DistInfo:
    """This process's place in the job: global and local rank, machines, and torchrun's restart count."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0          # torchrun's GROUP_RANK: which machine (agent) this process runs on
    nodes: int = 1              # GROUP_WORLD_SIZE: how many machines (agents) the job has
    restart_count: int = 0      # TORCHELASTIC_RESTART_COUNT: 0 on the first attempt, k after k restarts
    run_id: str = ""            # TORCHELASTIC_RUN_ID: the job's rendezvous id (--rdzv-id)
    launched: bool = False      # started by torchrun (even with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_type: str = "cpu") -> DistInfo:
    """Join the process group if launched by torchrun; a single process otherwise."""
    env = os.environ
    elastic = dict(restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
                   run_id=env.get("TORCHELASTIC_RUN_ID", ""),
                   launched="TORCHELASTIC_RUN_ID" in env or "RANK" in env)
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(**elastic)
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this machine shows {torch.cuda.device_count()}",
                              fix="give torchrun --nproc-per-node at most the number of GPUs per machine")
        torch.cuda.set_device(local_rank)  # NCCL collectives (barrier, gathers) run on the current device
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            rank = int(env["RANK"])
            dist.init_process_group(backend=backend, store=attempt_store(rank, world), rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")), node_rank=int(env.get("GROUP_RANK", "0")),
                    nodes=int(env.get("GROUP_WORLD_SIZE", "1")), **elastic)


def attempt_store(rank: int, world: int, timeout: float = 600.0) -> dist.Store:
    """The store of torchrun's agent, under a prefix no earlier attempt of the job used.

    torchrun's c10d rendezvous hands every attempt the same store (its agent's TCPStore), and the keys
    a process group writes there (each rank's address) outlive a failed attempt; a restarted rank may
    read the dead one's address and fail to connect ("Connection refused": pytorch issue #135712).
    TORCHELASTIC_RESTART_COUNT cannot tell attempts apart: each machine counts only its own failures.
    So the ranks agree on a fresh random prefix: rank r posts a fresh nonce, rank 0 answers every
    nonce it sees with its own fresh one, and rank r takes the answer that echoes its nonce and
    acknowledges it; rank 0 waits for all acknowledgements of its nonce. Stale keys only delay this."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=datetime.timedelta(seconds=timeout))
    base = f"nanoft/attempt/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    mine = secrets.token_hex(8)
    deadline = time.monotonic() + timeout

    def read(key: str) -> Optional[str]:
        return store.get(key).decode() if store.check([key]) else None

    if rank == 0:
        pending, answered = set(range(1, world)), {}
        while pending:
            for r in sorted(pending):
                ask = read(f"{base}/ask/{r}")
                if ask is not None and answered.get(r) != ask:
                    store.set(f"{base}/reply/{r}", f"{ask}:{mine}")
                    answered[r] = ask
                if read(f"{base}/ack/{r}") == f"{answered.get(r)}:{mine}":
                    pending.discard(r)
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ranks {sorted(pending)} did not join the process group in {timeout:.0f} s")
                time.sleep(0.05)
        prefix = mine
    else:
        store.set(f"{base}/ask/{rank}", mine)
        while True:
            reply = read(f"{base}/reply/{rank}")
            if reply is not None and reply.startswith(mine + ":"):
                prefix = reply.split(":", 1)[1]
                store.set(f"{base}/ack/{rank}", reply)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank 0 did not answer rank {rank} in {timeout:.0f} s")
            time.sleep(0.05)
    return dist.PrefixStore(f"{base}/{prefix}/", store)


def all_gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """`fn()` run on rank 0 alone; every rank returns its result, or raises its error.

    A NanoftError keeps its class and message on every rank; any other exception on rank 0 becomes a
    NanoftError elsewhere (rank 0 raises the original)."""
    if not info.enabled:
        return fn()
    outcome: Any = None
    error: Optional[BaseException] = None
    if info.is_main:
        try:
            outcome = ("ok", fn())
        except NanoftError as e:
            error, outcome = e, ("error", type(e).__name__, e.message, e.path, e.line, e.fix)
        except Exception as e:  # still tell the others, or they wait for rank 0 forever
            error, outcome = e, ("failed", f"{type(e).__name__}: {e}")
    outcome = broadcast_object(outcome, info)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise _rebuild_error(*outcome[1:])
    if outcome[0] == "failed":
        raise NanoftError(f"rank 0 failed: {outcome[1]}")
    return outcome[1]


def _rebuild_error(name: str, message: str, path: Optional[str], line: Optional[int],
                   fix: Optional[str]) -> NanoftError:
    """The NanoftError subclass called `name` (NanoftError itself if unknown) with rank 0's message."""
    classes: List[Type[NanoftError]] = [NanoftError]
    for cls in classes:
        classes.extend(c for c in cls.__subclasses__() if c not in classes)
    cls = next((c for c in classes if c.__name__ == name), NanoftError)
    try:
        return cls(message, path=path, line=line, fix=fix)
    except TypeError:  # a subclass with its own constructor
        return NanoftError(message, path=path, line=line, fix=fix)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: bool, info: DistInfo, device: Optional[torch.device] = None) -> bool:
    """True on every rank when `flag` is True on any (e.g. a signal that reached one process only)."""
    if not info.enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
