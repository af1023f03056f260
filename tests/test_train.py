"""The trainer: learning, schedules, accumulation, exact resume, run directories, bad input."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from nanoft.errors import ConfigError
from nanoft.train import Trainer, TrainConfig
from nanoft.train.schedules import ScheduleConfig, factor_fn
from nanoft.weights.safetensors_io import SafetensorsFile


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_decreases_and_run_directory(tiny_config):
    trainer = Trainer(tiny_config(epochs=4))
    results = trainer.fit()
    records = [json.loads(l) for l in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05
    assert results["best"]["metrics"]["dev"]["accuracy"] >= 0.75
    for name in ("config.toml", "metrics.jsonl", "results.json", "task.json", "checkpoint/trainer_state.json",
                 "checkpoint/model.safetensors", "best/model.safetensors", "best/tokenizer.json"):
        assert (trainer.run_dir / name).is_file(), name
    saved = json.loads((trainer.run_dir / "results.json").read_text())
    assert saved["steps"] == trainer.total_steps == 4 * 12
    # throughput is wall-clock, so only its definition is checked: every example of 4 epochs over its seconds
    seen = 4 * len(trainer.train_data)
    assert seen / saved["examples_per_s"] == pytest.approx(saved["train_seconds"], abs=5e-4)  # seconds: to the ms
    assert saved["peak_memory_mb"] > 0
    # the best model loads back in nanoft with the same dev accuracy
    from nanoft.commands import evaluate_path

    text = evaluate_path(str(trainer.run_dir), None, None, None, 64, None)
    assert f"accuracy {results['best']['metrics']['dev']['accuracy']:.4f}" in text


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "cyclic", "one-cycle"])
def test_schedule_matches_formula(name):
    total, warm = 100, 10
    cfg = ScheduleConfig(name=name, total_steps=total, warmup_steps=warm, cycle_steps=20)
    f = factor_fn(cfg)

    def expected(s):
        w = (s + 1) / warm if s < warm else 1.0
        if name == "constant":
            return w
        if name == "linear":
            return w if s < warm else 1 - (s - warm) / (total - warm)
        if name == "cosine":
            return w if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        if name == "cyclic":
            cycle = math.floor(1 + s / 40)
            x = abs(s / 20 - 2 * cycle + 1)
            return 0.1 + 0.9 * max(0.0, 1 - x)
        up = 30
        initial, final = 1 / 25, 1 / 25 / 1e4
        if s < up:
            return initial + (1 - initial) * 0.5 * (1 - math.cos(math.pi * s / up))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (s - up) / (total - up)))

    for s in range(total):
        assert f(s) == pytest.approx(expected(s), abs=1e-12), s
    if name == "cyclic":
        assert f(0) == pytest.approx(0.1) and f(20) == pytest.approx(1.0) and f(40) == pytest.approx(0.1)


def test_scheduler_drives_optimizer_lr(tiny_config):
    trainer = Trainer(tiny_config(max_steps=10, warmup=2))
    lrs = []
    for _ in range(4):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.scheduler.step()
    assert lrs == pytest.approx([1.5e-3, 3e-3, 3e-3, 3e-3 * 7 / 8])


def test_grad_accumulation_equals_bigger_batch(tiny_task, tiny_config, tmp_path):
    """k accumulated micro-batches = one k-times-bigger batch (dropout off), to 1e-6."""
    # SGD keeps the comparison linear in the gradient (Adam divides float noise by tiny second moments)
    common = dict(model=str(tiny_task["model_nodrop"]), max_steps=3, sampler="random", weight_decay=0.0, optimizer="sgd",
                  max_grad_norm=None, precision="fp32")
    big = Trainer(tiny_config(batch_size=12, grad_accum=1, output=str(tmp_path / "big"), **common))
    small = Trainer(tiny_config(batch_size=12, grad_accum=1, output=str(tmp_path / "small"), **common))
    # the same 12-example step, given to `small` as 4 + 5 + 3 micro-batches
    groups = [next(iter(big.sampler)) for _ in range(1)]
    for _ in range(3):
        indices = groups[0]
        big.train_step([indices])
        small.train_step([indices[:4], indices[4:9], indices[9:]])
    a, b = state(big.model), state(small.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)


def test_gradient_checkpointing_trains_the_same_weights(tiny_config, tmp_path):
    """Recomputing layers in backward (dropout on: the RNG state is replayed) changes no weight beyond 1e-6."""
    plain = Trainer(tiny_config(max_steps=4, output=str(tmp_path / "plain")))
    plain.fit()
    recomputed = Trainer(tiny_config(max_steps=4, gradient_checkpointing=True, output=str(tmp_path / "ckpt")))
    assert recomputed.model.encoder.gradient_checkpointing
    recomputed.fit()
    a, b = state(plain.model), state(recomputed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)


def test_resume_is_bit_for_bit(tiny_config, tmp_path):
    full = Trainer(tiny_config(output=str(tmp_path / "full"), eval_every=5, epochs=3))
    full.fit()
    first = Trainer(tiny_config(output=str(tmp_path / "cut"), eval_every=5, epochs=3))
    assert first.fit(stop_at_step=13) == {"stopped_at": 13}
    resumed = Trainer(tiny_config(output=str(tmp_path / "cut"), eval_every=5, epochs=3, resume=True))
    assert resumed.step == 13
    resumed.fit()
    a, b = state(full.model), state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    log_b = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "examples_per_s"} for l in lines]
    assert strip(log_a) == strip(log_b)


def test_interrupt_on_an_epochs_last_step_resumes_with_its_evaluation(tiny_config, tmp_path):
    """A stop on the last step of an epoch saves before that epoch's evaluation; the resumed run evaluates it
    once (at that step) and the log and weights equal the uninterrupted run's."""
    full = Trainer(tiny_config(output=str(tmp_path / "full"), epochs=3))
    full.fit()
    per_epoch = full.total_steps // 3
    cut = Trainer(tiny_config(output=str(tmp_path / "cut"), epochs=3))
    assert cut.fit(stop_at_step=per_epoch) == {"stopped_at": per_epoch}
    before = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert not any("eval" in json.loads(line) for line in before)  # the epoch's evaluation had not run
    Trainer(tiny_config(output=str(tmp_path / "cut"), epochs=3, resume=True)).fit()
    log_a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    log_b = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "examples_per_s"} for l in lines]
    assert strip(log_a) == strip(log_b)
    assert sum(1 for r in strip(log_b) if "eval" in r and r["step"] == per_epoch) == 1
    a, b = state(full.model), state(Trainer(tiny_config(output=str(tmp_path / "cut"), epochs=3, resume=True)).model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_saves_and_cli_resumes(tiny_config, tmp_path):
    """The real CLI: SIGINT mid-run saves a checkpoint and exits non-zero; --resume continues from that
    step (it does not retrain from step 0) and ends with the uninterrupted run's metrics log and weights."""
    cfg = tiny_config(output=str(tmp_path / "ref"), epochs=12, log_every=1)
    reference = Trainer(cfg)
    reference.fit()
    args = [sys.executable, "-c", "from nanoft.cli import main; main()", "train",
            "--train-file", cfg.train_file, "--dev-file", cfg.dev_file, "--model", cfg.model,
            "--batch-size", "8", "--epochs", "12", "--lr", "3e-3", "--max-length", "32", "--seed", "0",
            "--precision", "fp32",
            "--log-every", "1", "--quiet", "--output", str(tmp_path / "cli")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    metrics = tmp_path / "cli" / "metrics.jsonl"
    import re
    import time

    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    stopped = int(re.search(r"interrupted at step (\d+)", err).group(1))
    total = reference.total_steps
    assert 5 <= stopped < total
    before = metrics.read_text().splitlines()  # the interrupted process's log, up to its checkpoint
    assert json.loads(before[-1])["step"] == stopped

    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["steps"] == total
    after = metrics.read_text().splitlines()
    # The resumed process kept the interrupted process's lines as they were (byte for byte, including their
    # wall-clock examples_per_s, which a re-run from step 0 would have measured afresh) and appended only the
    # steps after `stopped`: it trained total - stopped steps, not total.
    assert after[:len(before)] == before
    appended = [json.loads(line) for line in after[len(before):]]
    train_appended = [r for r in appended if "loss" in r]
    assert [r["step"] for r in train_appended] == list(range(stopped + 1, total + 1))
    # Nothing before `stopped` is redone. The one record allowed at `stopped` itself is the epoch-end evaluation
    # when the signal landed on an epoch's last step: the checkpoint was saved before that evaluation ran.
    steps_per_epoch = total // 12
    at_stop = [r for r in appended if r["step"] <= stopped]
    assert all(r["step"] == stopped and "eval" in r and "loss" not in r for r in at_stop)
    assert len(at_stop) == (1 if stopped % steps_per_epoch == 0 else 0)

    # The whole log equals the uninterrupted run's, record for record. Excluded: examples_per_s only, a
    # wall-clock throughput (examples / seconds of training) that differs between any two runs; every other
    # field (step, epoch, examples, loss, lr, grad_norm, eval metrics) is compared exactly.
    wall_clock = {"examples_per_s"}
    expected_log = [json.loads(line) for line in (reference.run_dir / "metrics.jsonl").read_text().splitlines()]
    got_log = [json.loads(line) for line in after]
    compared = {"step", "epoch", "examples", "loss", "lr", "grad_norm", "eval"}
    assert all(set(r) <= compared | wall_clock for r in expected_log)
    strip = lambda records: [{k: v for k, v in r.items() if k not in wall_clock} for r in records]  # noqa: E731
    assert strip(got_log) == strip(expected_log)

    resumed = SafetensorsFile(tmp_path / "cli" / "checkpoint" / "model.safetensors")
    expected = SafetensorsFile(reference.run_dir / "checkpoint" / "model.safetensors")
    assert set(resumed.keys()) == set(expected.keys())
    for key in expected.keys():
        assert torch.equal(resumed.tensor(key), expected.tensor(key)), key


def test_existing_run_dir_needs_overwrite_or_resume(tiny_config):
    Trainer(tiny_config(max_steps=1)).fit()
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        Trainer(tiny_config(max_steps=1))
    Trainer(tiny_config(max_steps=1, overwrite=True))  # allowed


def test_resume_with_incompatible_config(tiny_config):
    Trainer(tiny_config(max_steps=2)).fit()
    with pytest.raises(ConfigError, match="cannot resume: batch_size was 8, now 4"):
        Trainer(tiny_config(max_steps=2, batch_size=4, resume=True))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(max_steps=6, checkpoint_every=2))
    trainer.fit(stop_at_step=2)
    good = SafetensorsFile(trainer.run_dir / "checkpoint" / "model.safetensors")
    before = {k: good.tensor(k).clone() for k in good.keys()}
    with torch.no_grad():
        trainer.model.head.out.weight.fill_(float("nan"))
    from nanoft.train import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match="loss became nan at step 3; the last good checkpoint"):
        trainer.fit()
    after = SafetensorsFile(trainer.run_dir / "checkpoint" / "model.safetensors")
    assert all(torch.equal(before[k], after.tensor(k)) for k in before)


def test_unknown_config_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'batch_sise'.*did you mean 'batch_size'"):
        TrainConfig.from_dict({"batch_sise": 3})
    toml = tmp_path / "exp.toml"
    toml.write_text('task = "sst2"\nwarmpu = 0.1\n')
    result = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "train", "--config", str(toml)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown config key 'warmpu'" in result.stderr and "did you mean 'warmup'" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "train", "--lr-rate", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "No such option '--lr-rate'" in result.stderr and "'--lr'" in result.stderr


def test_cli_bad_task_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "train", "--task", "sst3",
                             "--output", str(tmp_path / "r")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "sst2" in result.stderr


def test_predict_writes_labels_and_probabilities(tiny_config, tiny_task, tmp_path):
    trainer = Trainer(tiny_config(epochs=4))
    trainer.fit()
    from nanoft.commands import predict_file

    out = tmp_path / "pred.csv"
    predict_file(str(trainer.run_dir), str(tiny_task["data"] / "dev.tsv"), str(out), [], False, 16, None)
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:4] == ["index", "line", "label", "label_id"] and len(lines) == 33
    assert header[-1] == "text"  # the input's text column follows the probabilities (#18)
    row = lines[1].split(",")
    assert row[1] == "2"  # dev.tsv's first example is on the line after its header
    assert abs(sum(float(x) for x in row[4:-1]) - 1) < 1e-4


def test_paths_given_as_path_objects_are_recorded_and_resume(tiny_config, tiny_task, tmp_path):
    """Python callers pass pathlib.Path: config.toml records strings and a resume with Paths is compatible."""
    from pathlib import Path

    from nanoft.train.config import read_toml

    paths = dict(output=tmp_path / "run", model=Path(tiny_task["model"]),
                 train_file=Path(tiny_task["data"]) / "train.tsv", dev_file=Path(tiny_task["data"]) / "dev.tsv")
    first = Trainer(tiny_config(epochs=1, **paths))
    assert first.fit(stop_at_step=2) == {"stopped_at": 2}
    recorded = read_toml(tmp_path / "run" / "config.toml")
    assert recorded["output"] == str(tmp_path / "run") and recorded["model"] == str(tiny_task["model"])
    resumed = Trainer(tiny_config(epochs=1, resume=True, **paths))
    assert resumed.step == 2


def test_eval_batches_are_capped_by_tokens_and_scores_do_not_change(tiny_config, tmp_path):
    """--eval-max-tokens lowers the evaluation batch for long examples (at least 1), leaves short ones at
    --eval-batch-size, and the metrics do not depend on it (fp32: same logits to 1e-6)."""
    from types import SimpleNamespace

    from nanoft.train.evaluate import predict_logits
    from nanoft.train.trainer import eval_batch_size

    config = tiny_config(eval_batch_size=128, eval_max_tokens=65536)
    assert eval_batch_size(config, SimpleNamespace(lengths=[30, 2048, 100])) == 32
    assert eval_batch_size(config, SimpleNamespace(lengths=[12, 128])) == 128
    assert eval_batch_size(config.replace(eval_max_tokens=100), SimpleNamespace(lengths=[512])) == 1
    assert eval_batch_size(config.replace(eval_max_tokens=None), SimpleNamespace(lengths=[4096])) == 128
    with pytest.raises(ConfigError, match="eval_max_tokens"):
        tiny_config(eval_max_tokens=0).validate()
    trainer = Trainer(tiny_config(eval_max_tokens=40))  # tiny task: lengths up to 32, so batches of 1
    data = trainer.eval_data["dev"]
    assert eval_batch_size(trainer.config, data) == 40 // int(max(data.lengths))
    capped = predict_logits(trainer.model, data, trainer.tokenizer.pad_token_id, eval_batch_size(trainer.config, data))
    whole = predict_logits(trainer.model, data, trainer.tokenizer.pad_token_id, len(data))
    torch.testing.assert_close(capped, whole, rtol=0, atol=1e-6)
