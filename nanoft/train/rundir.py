"""The run directory: one class that knows its layout, for the Trainer that writes it and the commands
that read it (`eval`, `predict`, `run`, `report`).

    RUN/config.toml        resolved TrainConfig (replays the run)
    RUN/task.json          the task (labels, columns, splits) so eval/predict need no flags
    RUN/metrics.jsonl      one JSON record per log step or evaluation
    RUN/results.json       final, best and test metrics, time, memory, versions
    RUN/checkpoint/        latest state: model (or trainable tensors) + trainer_state.{json,safetensors}
    RUN/best/  RUN/swa/    loadable models (Hugging Face layout; PEFT: adapter/ too)
    RUN/tensorboard/       optional TensorBoard events
    RUN/launch.json        under torchrun: the latest attempt's processes, machines, restart count and a
                           token every rank reads back (the folder must be on storage all machines share)
    RUN/.lock              held (flock) by the one process writing the run

A run directory holds no pickle, so loading one from elsewhere can never run code. Only one process
writes a run at a time: the lock is an advisory `flock` that the kernel drops when its holder dies,
so a lock left by a killed run is stale by construction and is simply taken over.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from nanoft.errors import CheckpointError, ConfigError, NanoftError
from nanoft.io import atomic_write_bytes, atomic_write_json, fsync_dir

CONFIG, TASK, METRICS, RESULTS = "config.toml", "task.json", "metrics.jsonl", "results.json"
CHECKPOINT, BEST, SWA, TENSORBOARD, LOCK = "checkpoint", "best", "swa", "tensorboard", ".lock"
LAUNCH = "launch.json"
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"
LEGACY_STATE = "trainer_state.pt"
PER_PROCESS_KEYS = ("batch_size", "max_tokens")  # × processes = the global batch, which a resume must keep
# settings a resumed run must share with the run it continues (else the saved state does not apply)
RESUME_KEYS = ("task", "train_file", "model", "batch_size", "max_length", "seed", "peft", "attention",
               "grad_accum", "optimizer", "sampler", "max_tokens", "truncation", "truncation_head_tokens")


class RunLocked(NanoftError):
    """Another live process is writing this run directory."""


class RunDir:
    """Paths, policy (exists / overwrite / resume / lock) and I/O of one run directory."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self._lock_fd: Optional[int] = None
        self._tb: Any = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    def step_export(self, step: int) -> Path:
        """RUN/step-N/: the model as it was after optimizer step N (--export-every)."""
        return self.path / f"step-{step}"

    # ------------------------------------------------------------------ policy
    def exists(self) -> bool:
        return self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())

    def check(self, overwrite: bool, resume: bool) -> None:
        """Refuse what would clobber a run: an existing run without --overwrite/--resume, or a live writer."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("run directory is a file", path=str(self.path), fix="choose another --output")
        holder = self.lock_holder()
        if holder is not None:
            raise RunLocked(f"another nanoft process ({holder}) is writing this run directory", path=str(self.path),
                            fix="wait for it to finish, stop it, or choose another --output")
        if not self.exists():
            if resume:
                raise ConfigError("nothing to resume: the run directory does not exist or is empty", path=str(self.path),
                                  fix="drop --resume to start the run, or point --output at the run to continue")
            return
        if not (overwrite or resume):
            raise ConfigError("run directory already exists", path=str(self.path),
                              fix="pass --overwrite to replace it, --resume to continue it, or --output elsewhere")
        if resume and self.find_checkpoint() is None:
            legacy = self.checkpoint / LEGACY_STATE
            if legacy.is_file():
                raise CheckpointError("checkpoint is in the old pickle format, which nanoft no longer reads "
                                      "(unpickling a file can run arbitrary code)", path=str(legacy),
                                      fix="start the run again with --overwrite")
            raise CheckpointError("nothing to resume: the run has no complete checkpoint", path=str(self.path),
                                  fix="start it again with --overwrite (no step had been checkpointed)")

    def check_resume_compatible(self, now: Dict[str, Any], world_size: int = 1) -> None:
        """A resumed run must use the saved run's data, model and batch geometry.

        On another number of processes (`world_size`) the per-process batch may change as long as the
        global batch (per-process batch × processes, and likewise --max-tokens) stays what it was: the
        run then continues on the very same global batches."""
        saved = self.path / CONFIG
        if not saved.is_file():
            return
        from nanoft.train.config import read_toml

        before = read_toml(saved)
        launch = self.read_launch() or {}  # the last attempt's processes and per-process batch (torchrun only)
        saved_world = launch.get("world_size")
        saved_world = saved_world if isinstance(saved_world, int) and saved_world > 0 else 1
        for key in RESUME_KEYS:
            was = before.get(key)
            if key in PER_PROCESS_KEYS and isinstance(launch.get(key), int):
                was = launch[key]  # the per-process batch of the last attempt, which may have changed it
            if key in PER_PROCESS_KEYS and world_size != saved_world:
                _check_global(key, was, saved_world, now.get(key), world_size, str(saved))
            elif was != now.get(key):
                raise ConfigError(f"cannot resume: {key} was {was!r}, now {now.get(key)!r}",
                                  path=str(saved), fix="resume with the run's own settings or start a new run")

    def open(self, clear: bool) -> None:
        """Create the folder and take the writer's lock; `clear` empties it first (--overwrite)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.acquire_lock()
        if clear:
            for entry in self.path.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self.release_lock()

    # ------------------------------------------------------------------ lock
    def acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"another nanoft process ({self.lock_holder() or 'unknown'}) is writing this run "
                                "directory", path=str(self.path),
                                fix="wait for it to finish, stop it, or choose another --output") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def lock_holder(self) -> Optional[str]:
        """"pid N on HOST" while a live process holds the lock; None when free or stale (holder died)."""
        path = self.path / LOCK
        if self._lock_fd is not None or not path.is_file():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # succeeds unless someone holds it exclusively
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except OSError:
            try:
                info = json.loads(path.read_text() or "{}")
                return f"pid {info.get('pid')} on {info.get('host')}"
            except (ValueError, OSError):
                return "unknown process"
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ checkpoint discovery
    def find_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint, recovering from a crash mid-save.

        Save order: write checkpoint.tmp/ (state file last) → checkpoint/ → checkpoint.old/ →
        checkpoint.tmp/ → checkpoint/ → delete checkpoint.old/. A crash between the two renames
        leaves only checkpoint.old/ complete, which is moved back; a partial .tmp is ignored.
        """
        current, old = self.checkpoint, self.path / (CHECKPOINT + ".old")
        if is_complete(current):
            return current
        if is_complete(old):
            if current.exists():
                shutil.rmtree(current)
            os.replace(old, current)
            fsync_dir(self.path)
            return current
        return None

    def has_checkpoint(self) -> bool:
        return is_complete(self.checkpoint) or is_complete(self.path / (CHECKPOINT + ".old"))

    # ------------------------------------------------------------------ files
    def write_config(self, toml_text: str) -> None:
        atomic_write_bytes(self.path / CONFIG, lambda f: f.write(toml_text.encode("utf-8")))

    def read_config(self) -> Dict[str, Any]:
        from nanoft.train.config import read_toml

        return read_toml(self.path / CONFIG)

    def is_run(self) -> bool:
        return (self.path / CONFIG).is_file()

    def write_task(self, info: Dict[str, Any]) -> None:
        atomic_write_json(self.path / TASK, info)

    def read_task(self) -> Optional[Dict[str, Any]]:
        path = self.path / TASK
        return _read_json(path) if path.is_file() else None

    def write_launch(self, info: Dict[str, Any]) -> None:
        atomic_write_json(self.path / LAUNCH, info)

    def read_launch(self) -> Optional[Dict[str, Any]]:
        """launch.json's record, or None when there is none (a run never started by torchrun) or it is unreadable."""
        try:
            info = json.loads((self.path / LAUNCH).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def log(self, record: Dict[str, Any], tensorboard: bool = False) -> None:
        """Append one record to metrics.jsonl (and TensorBoard scalars when asked)."""
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if tensorboard and self.tensorboard() is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(f"train/{key}", value, record["step"])

    def tensorboard(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                import logging

                logging.getLogger(__name__).warning("tensorboard is not installed; --tensorboard ignored")
                self._tb = False
                return None
            self._tb = SummaryWriter(str(self.path / TENSORBOARD))
        return self._tb or None

    def metrics(self) -> List[Dict[str, Any]]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, lines: int) -> None:
        """Drop records logged after the checkpoint, so a resumed run's log equals an uninterrupted one."""
        path = self.path / METRICS
        if path.is_file():
            kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            atomic_write_bytes(path, lambda f: f.write("".join(kept).encode("utf-8")))

    def last_eval(self) -> Optional[Dict[str, Any]]:
        evals = [r["eval"] for r in self.metrics() if "eval" in r]
        return evals[-1] if evals else None

    def write_results(self, results: Dict[str, Any]) -> None:
        atomic_write_json(self.path / RESULTS, results)

    def has_results(self) -> bool:
        return (self.path / RESULTS).is_file()

    def read_results(self) -> Dict[str, Any]:
        return _read_json(self.path / RESULTS)

    def model_dir(self) -> Path:
        """The model to evaluate or predict with: best/ if kept, else the latest checkpoint."""
        for candidate in (self.best, self.checkpoint):
            if (candidate / "model.safetensors").is_file():
                return candidate
        raise ConfigError("run has no saved model yet (no best/ or checkpoint/)", path=str(self.path))


def is_complete(directory: Path) -> bool:
    """A checkpoint is complete when its state file (written last) lists files that are all there."""
    state = directory / STATE_JSON
    if not state.is_file():
        return False
    try:
        files = json.loads(state.read_text(encoding="utf-8")).get("files", {})
        return isinstance(files, dict) and all(
            isinstance(size, int) and (directory / name).is_file() and (directory / name).stat().st_size == size
            for name, size in files.items())
    except (ValueError, OSError, AttributeError):
        return False


def _check_global(key: str, was: Any, saved_world: int, now: Any, world_size: int, where: str) -> None:
    """A resume on `world_size` processes of a run saved on `saved_world` must keep the global `key`."""
    before, after = (was or 0) * saved_world, (now or 0) * world_size
    if before == after:
        return
    option = "--" + key.replace("_", "-")
    fix = f"resume on {saved_world} processes with {option} {was}"
    if before % world_size == 0:
        fix += f", or on {world_size} with {option} {before // world_size}"
    raise ConfigError(f"cannot resume on {world_size} process(es): the global {key} (per process × processes) was "
                      f"{was} × {saved_world} = {before}, now {now} × {world_size} = {after}", path=where, fix=fix)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"not valid JSON: {e}", path=str(path)) from None


def run_dirs(root: Union[str, Path]) -> List[RunDir]:
    """Every finished run (a folder with results.json) under `root`, in path order. Linked folders are followed
    (e.g. a dense baseline linked from another study), each real folder once."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to the same runs
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort()
        if RESULTS in files:
            found.append(Path(folder))
    return [RunDir(p) for p in sorted(found)]
