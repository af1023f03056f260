"""Runs that cannot be turned against their user, and that survive crashes: no code runs from a run
directory, every crash point of a checkpoint save resumes bit for bit, a full disk keeps the old
checkpoint, one writer per run directory, and a real CLI run survives repeated SIGKILLs."""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanoft.errors import CheckpointError, NanoftError
from nanoft.train import Trainer
from nanoft.train.checkpointer import Checkpointer, load_optimizer_state
from nanoft.train.rundir import RunDir, RunLocked
from nanoft.weights.safetensors_io import SafetensorsFile


class Payload:
    """Unpickling this creates `marker`: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"optimizer": Payload(marker)}))


def weights(model: torch.nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def strip_wall_clock(run: Path):
    """metrics.jsonl without examples_per_s (wall-clock throughput, the one field that differs between runs)."""
    return [{k: v for k, v in json.loads(l).items() if k != "examples_per_s"}
            for l in (run / "metrics.jsonl").read_text().splitlines()]


def nanoft_cli(*args: str) -> list:
    return [str(Path(sys.executable).parent / "nanoft"), *args]


def cli_args(tiny_task, output: Path, *extra: str) -> list:
    return nanoft_cli("train", "--train-file", str(tiny_task["data"] / "train.tsv"),
                      "--dev-file", str(tiny_task["data"] / "dev.tsv"), "--model", str(tiny_task["model"]),
                      "--batch-size", "8", "--lr", "3e-3", "--max-length", "32", "--seed", "0",
                      "--precision", "fp32", "--quiet", "--log-every", "1", "--output", str(output), *extra)


# ------------------------------------------------------------------ nothing read runs code
def test_crafted_pickle_as_trainer_state_runs_nothing(tiny_config, tiny_task, tmp_path):
    """The attack from the issue: checkpoint/trainer_state.pt replaced by a pickle. Resume (Python and CLI)
    refuses with one line and the payload never runs."""
    run = tmp_path / "run"
    Trainer(tiny_config(max_steps=4, checkpoint_every=2)).fit(stop_at_step=2)
    marker = tmp_path / "pwned"
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (run / "checkpoint" / name).unlink()
    write_pickle(run / "checkpoint" / "trainer_state.pt", marker)
    with pytest.raises(CheckpointError, match="old pickle format"):
        Trainer(tiny_config(max_steps=4, checkpoint_every=2, resume=True))
    done = subprocess.run(cli_args(tiny_task, run, "--max-steps", "4", "--resume"), capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "old pickle format" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("name", ["trainer_state.json", "trainer_state.safetensors"])
def test_pickle_in_place_of_the_new_state_files_runs_nothing(tiny_config, tmp_path, name):
    run = tmp_path / "run"
    Trainer(tiny_config(max_steps=4, checkpoint_every=2)).fit(stop_at_step=2)
    marker = tmp_path / "pwned"
    state = run / "checkpoint" / name
    size = state.stat().st_size
    payload = pickle.dumps(Payload(marker))
    state.write_bytes(payload + b" " * max(0, size - len(payload)))  # keep the size the manifest expects
    if len(payload) > size:
        pytest.fail("payload larger than the state file: the test must keep sizes equal")
    with pytest.raises(NanoftError) as info:
        Trainer(tiny_config(max_steps=4, checkpoint_every=2, resume=True))
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_pickle_as_adapter_file_runs_nothing(tiny_task, tmp_path):
    import nanoft
    from nanoft import peft

    model = nanoft.load_model(tiny_task["model"], head="classification", num_labels=2)
    peft.apply(model, "lora", r=2, alpha=4, targets=["query", "value"])
    peft.save_adapter(model, tmp_path / "adapter")
    marker = tmp_path / "pwned"
    (tmp_path / "adapter" / "adapter.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    fresh = nanoft.load_model(tiny_task["model"], head="classification", num_labels=2)
    with pytest.raises(NanoftError):
        peft.load_adapter(fresh, tmp_path / "adapter")
    assert not marker.exists()


def test_malformed_state_is_one_clear_line(tiny_config, tmp_path):
    """Valid JSON of the wrong shape (a hand-edited or foreign state file) names what is wrong."""
    run = tmp_path / "run"
    Trainer(tiny_config(max_steps=4, checkpoint_every=2)).fit(stop_at_step=2)
    path = run / "checkpoint" / "trainer_state.json"
    document = json.loads(path.read_text())
    document["state"]["step"] = "two"
    text = json.dumps(document)
    files = document["files"]
    path.write_text(text)
    # the manifest lists the state file's own size only for the other files: still complete
    assert "trainer_state.json" not in files
    with pytest.raises(CheckpointError, match="'step' is a str, expected int"):
        Trainer(tiny_config(max_steps=4, checkpoint_every=2, resume=True))


def test_optimizer_state_of_another_shape_is_refused(tiny_config, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(max_steps=4, checkpoint_every=2)).fit(stop_at_step=2)
    tensors_file = run / "checkpoint" / "trainer_state.safetensors"
    st = SafetensorsFile(tensors_file)
    tensors = {k: st.tensor(k).clone() for k in st.keys()}
    key = next(k for k in tensors if k.endswith("exp_avg") and tensors[k].dim() == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    from nanoft.weights.safetensors_io import save_file

    save_file(tensors, tensors_file)
    document = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    document["files"]["trainer_state.safetensors"] = tensors_file.stat().st_size
    (run / "checkpoint" / "trainer_state.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="exp_avg"):
        Trainer(tiny_config(max_steps=4, checkpoint_every=2, resume=True))


def test_optimizer_state_takes_a_non_contiguous_parameters_layout(tmp_path):
    """Moments saved for a transposed (non-contiguous) parameter come back contiguous; loaded as they are, the fused
    AdamW step pairs them with the wrong elements. After load_optimizer_state, training continues exactly as the
    uninterrupted optimizer does (reference: the same steps without a save)."""
    from safetensors.torch import load_file, save_file

    from nanoft.train import statefile

    def parameter():
        return torch.nn.Parameter(torch.arange(15.0).reshape(5, 3).t() / 7)  # (3, 5), strides (1, 3)

    def step(weight, optimizer, seed):
        grad = torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed))
        optimizer.zero_grad()
        (weight * grad).sum().backward()
        optimizer.step()

    reference = parameter()
    optimizer = torch.optim.AdamW([reference], lr=0.1, fused=True)
    for seed in range(6):
        step(reference, optimizer, seed)

    weight = parameter()
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    for seed in range(3):
        step(weight, optimizer, seed)
    tensors = {}
    tree = statefile.encode(optimizer.state_dict(), tensors)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(tmp_path / "state.safetensors"))
    saved = statefile.decode(tree, load_file(str(tmp_path / "state.safetensors")), "state")
    resumed = torch.nn.Parameter(weight.detach().clone().t().contiguous().t())
    optimizer = torch.optim.AdamW([resumed], lr=0.1, fused=True)
    load_optimizer_state(optimizer, saved, "state")
    for seed in range(3, 6):
        step(resumed, optimizer, seed)
    assert torch.equal(resumed.detach(), reference.detach())


def test_resume_without_a_checkpoint_says_so(tiny_config, tmp_path):
    with pytest.raises(NanoftError, match="nothing to resume"):
        Trainer(tiny_config(max_steps=2, resume=True))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ crash at every point of a save
class Crash(BaseException):
    """A simulated power cut: not an Exception, so no cleanup code catches it."""


def crash_during_save(monkeypatch, at_step: int, crash_on_call: int, target: str) -> list:
    """Make the checkpoint save at `at_step` die at the `crash_on_call`-th call of `target` (os.replace,
    or shutil.rmtree). Returns a list that records how many such calls that save made."""
    calls = []
    real_save = Checkpointer.save
    module, name = target.split(".")
    real = getattr(__import__(module), name)

    def counting(*args, **kwargs):
        calls.append(args)
        if len(calls) == crash_on_call:
            raise Crash(f"{target} call {crash_on_call}")
        return real(*args, **kwargs)

    def save(self, model, state):
        if state["step"] != at_step:
            return real_save(self, model, state)
        monkeypatch.setattr(f"{module}.{name}", counting)
        try:
            return real_save(self, model, state)
        finally:
            monkeypatch.setattr(f"{module}.{name}", real)

    monkeypatch.setattr(Checkpointer, "save", save)
    return calls


@pytest.mark.slow
def test_every_crash_point_of_a_save_resumes_bit_for_bit(tiny_config, tmp_path, monkeypatch):
    """Checkpoints at steps 2, 3 (evaluation), 4, 6, 8; the save at step 4 dies at each of its renames in turn (every file
    published into checkpoint.tmp/, checkpoint → checkpoint.old, checkpoint.tmp → checkpoint) and at the
    deletion of checkpoint.old. Each time `--resume` ends with the uninterrupted run's weights and log."""
    common = dict(max_steps=8, checkpoint_every=2, eval_every=3)
    reference = Trainer(tiny_config(output=str(tmp_path / "ref"), **common))
    reference.fit()
    expected = weights(reference.model)

    probe = crash_during_save(monkeypatch, at_step=4, crash_on_call=10**9, target="os.replace")
    Trainer(tiny_config(output=str(tmp_path / "probe"), **common)).fit()
    monkeypatch.undo()
    renames = len(probe)
    # model.safetensors, config.json, tokenizer.json, the 2 state files, then the two folder renames
    assert renames == 7
    points = [("os.replace", k) for k in range(1, renames + 1)] + [("shutil.rmtree", 1)]
    resumed_from = set()
    for target, k in points:
        out = tmp_path / f"crash-{target}-{k}"
        crash_during_save(monkeypatch, at_step=4, crash_on_call=k, target=target)
        with pytest.raises(Crash):
            Trainer(tiny_config(output=str(out), **common)).fit()
            pytest.fail(f"no crash at {target} call {k}")
        monkeypatch.undo()
        resumed = Trainer(tiny_config(output=str(out), resume=True, **common))
        resumed_from.add(resumed.step)
        resumed.fit()
        assert_same(weights(resumed.model), expected)
        assert strip_wall_clock(out) == strip_wall_clock(tmp_path / "ref"), (target, k)
        assert not (out / "checkpoint.old").exists() and not (out / "checkpoint.tmp").exists()
    assert resumed_from == {3, 4}  # crashes before the swap fall back to step 3, after it keep step 4


def test_crash_after_the_final_evaluation_is_not_evaluated_twice(tiny_config, tmp_path, monkeypatch):
    """A run killed after its last evaluation was checkpointed (results.json not yet written) resumes to the
    uninterrupted run's log: the final evaluation is recorded once, not again on resume (found by the SIGKILL
    test in CI)."""
    common = dict(epochs=1, checkpoint_every=1, eval_every=0)
    Trainer(tiny_config(output=str(tmp_path / "ref"), **common)).fit()

    def killed(self, *args, **kwargs):
        raise Crash("after the final checkpoint")

    monkeypatch.setattr(Trainer, "_final_results", killed)
    with pytest.raises(Crash):
        Trainer(tiny_config(output=str(tmp_path / "run"), **common)).fit()
    monkeypatch.undo()
    Trainer(tiny_config(output=str(tmp_path / "run"), resume=True, **common)).fit()
    log = strip_wall_clock(tmp_path / "run")
    assert sum("eval" in record for record in log) == 1
    assert log == strip_wall_clock(tmp_path / "ref")


def test_disk_full_keeps_the_previous_checkpoint(tiny_config, tmp_path, monkeypatch):
    """ENOSPC while writing the step-4 checkpoint: one clear line naming the path; step 2's checkpoint is
    intact, nothing half-written remains, and resuming from it finishes bit for bit."""
    common = dict(max_steps=6, checkpoint_every=2)
    reference = Trainer(tiny_config(output=str(tmp_path / "ref"), **common))
    reference.fit()
    real_save, real_fsync = Checkpointer.save, os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    def save(self, model, state):
        if state["step"] == 4:
            monkeypatch.setattr(os, "fsync", full_disk)
        try:
            return real_save(self, model, state)
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)

    monkeypatch.setattr(Checkpointer, "save", save)
    run = tmp_path / "run"
    with pytest.raises(NanoftError) as info:
        Trainer(tiny_config(output=str(run), **common)).fit()
    message = str(info.value)
    assert "no space left on device" in message and "checkpoint" in message and "\n" not in message
    monkeypatch.undo()
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.old").exists()
    resumed = Trainer(tiny_config(output=str(run), resume=True, **common))
    assert resumed.step == 2
    resumed.fit()
    assert_same(weights(resumed.model), weights(reference.model))


# ------------------------------------------------------------------ one writer per run directory
LOCK_HOLDER = """
import sys, time
from nanoft.train.rundir import RunDir
RunDir(sys.argv[1]).open(clear=False)
print("locked", flush=True)
time.sleep(600)
"""


def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(tiny_config, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flags in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
                Trainer(tiny_config(max_steps=2, **flags))
        assert (run / ".lock").is_file()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert RunDir(run).lock_holder() is None  # the kernel dropped the dead process's lock: stale
    results = Trainer(tiny_config(max_steps=2, overwrite=True)).fit()
    assert results["steps"] == 2


def test_lock_refuses_a_second_writer_in_the_same_process(tmp_path):
    first, second = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    first.open(clear=False)
    try:
        with pytest.raises(RunLocked):
            second.open(clear=False)
    finally:
        first.close()
    second.open(clear=False)
    second.close()


# ------------------------------------------------------------------ SIGKILL a real CLI run, again and again
@pytest.mark.slow
def test_cli_run_survives_repeated_sigkill(tiny_config, tiny_task, tmp_path):
    """K = 5 SIGKILLs at random moments of a real `nanoft train` (checkpoint every step), each followed
    by `--resume`: the run ends with the uninterrupted run's weights and metrics, bit for bit."""
    epochs = "4"
    reference = tmp_path / "reference"  # the same settings as the CLI's below, in-process
    Trainer(tiny_config(output=str(reference), epochs=4, checkpoint_every=1)).fit()
    run = tmp_path / "run"
    rng = random.Random(0)
    kills = 0
    while kills < 5:
        resume = ["--resume"] if RunDir(run).has_checkpoint() else ["--overwrite"]
        proc = subprocess.Popen(cli_args(tiny_task, run, "--epochs", epochs, "--checkpoint-every", "1", *resume),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
        metrics = run / "metrics.jsonl"
        start_lines = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        # kill after a random number (1-4) of new log lines plus a random fraction of a step: counted in steps,
        # not seconds, so a fast machine cannot finish the 48 steps before the fifth kill
        target = start_lines + rng.randint(1, 4)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:
            pytest.fail(f"the run ended before kill {kills + 1}: make it longer")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    done = subprocess.run(cli_args(tiny_task, run, "--epochs", epochs, "--checkpoint-every", "1", "--resume"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    got = SafetensorsFile(run / "checkpoint" / "model.safetensors")
    want = SafetensorsFile(reference / "checkpoint" / "model.safetensors")
    assert set(got.keys()) == set(want.keys())
    for key in want.keys():
        assert torch.equal(got.tensor(key), want.tensor(key)), key
    assert strip_wall_clock(run) == strip_wall_clock(reference)
    assert json.loads((run / "results.json").read_text())["steps"] == json.loads(
        (reference / "results.json").read_text())["steps"]


def test_pickle_as_teacher_logit_cache_runs_nothing(tmp_path):
    """A pickle where distillation caches its teacher's logits is refused (recomputed), never unpickled."""
    from nanoft.train.techniques.distill import _read_cache

    marker = tmp_path / "pwned"
    cache, meta = tmp_path / "teacher_logits.npy", tmp_path / "teacher_logits.json"
    key = {"teacher": "t", "data": "d", "examples": 2, "max_length": 8}
    meta.write_text(json.dumps(key))
    cache.write_bytes(pickle.dumps(Payload(marker)))
    assert _read_cache(cache, meta, key, (2, 2)) is None
    import numpy as np

    np.save(cache, np.array([Payload(marker)], dtype=object), allow_pickle=True)  # an object array, too
    assert _read_cache(cache, meta, key, (2, 2)) is None
    assert not marker.exists()
    np.save(cache, np.ones((2, 2), dtype=np.float32))
    assert _read_cache(cache, meta, key, (2, 2)).shape == (2, 2)  # a sound cache is used
