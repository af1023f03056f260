"""Experiment files, report aggregation, and data-parallel training (2 CPU processes, gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nanoft.experiment import mean_std_max, report_text, run_experiments
from nanoft.weights.safetensors_io import SafetensorsFile


def write_experiment(tmp_path, tiny_task, rest: str):
    """An experiment file on the tiny task: 2 seeds, 3 steps; `rest` adds defaults and experiments."""
    exp = tmp_path / "exp.toml"
    exp.write_text(textwrap.dedent(f"""
        output_root = "{tmp_path / 'runs'}"
        seeds = [1, 2]
        [defaults]
        train_file = "{tiny_task['data'] / 'train.tsv'}"
        dev_file = "{tiny_task['data'] / 'dev.tsv'}"
        text_columns = ["text"]
        model = "{tiny_task['model']}"
        max_steps = 3
    """) + textwrap.dedent(rest))
    return exp


def test_run_continues_past_a_failing_experiment_and_skips_finished(tiny_task, tmp_path):
    exp = write_experiment(tmp_path, tiny_task, f"""
        batch_size = 8
        precision = "fp32"
        [experiments.broken]
        model = "{tmp_path / 'no-such-model'}"
        [experiments.ok]
        lr = 1e-3
    """)
    summary = run_experiments(str(exp))
    assert len(summary["failed"]) == 2 and all("broken" in f and "does not exist" in f for f in summary["failed"])
    assert len(summary["done"]) == 2
    assert (tmp_path / "runs" / "ok" / "seed1" / "results.json").is_file()
    assert "ok" in summary["table"] and "dev.accuracy" in summary["table"]
    again = run_experiments(str(exp), only=["ok"])
    assert len(again["skipped"]) == 2 and not again["done"]


def test_report_mean_std_max(tmp_path):
    accs = [0.5, 0.7, 0.9]
    for i, acc in enumerate(accs):
        d = tmp_path / "runs" / "lora" / f"seed{i}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "best": {"metrics": {"dev": {"accuracy": acc, "loss": 1.0}}}, "train_seconds": 10.0 * (i + 1),
            "examples_per_s": 100.0,
            "sparsity": {"pruned": {"sparsity": 0.8}, "encoder_linear": {"sparsity": 0.8}, "model": {"sparsity": acc / 2}}}))
    stats = mean_std_max(accs)
    assert stats["mean"] == pytest.approx(0.7) and stats["std"] == pytest.approx(0.2) and stats["max"] == 0.9
    text = report_text(str(tmp_path / "runs"), "markdown")
    assert "| lora" in text and "0.7000 ± 0.2000 / 0.9000" in text and "20.0 ± 10.0 / 30.0" in text
    csv_text = report_text(str(tmp_path / "runs"), "csv")
    header, row = csv_text.splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert float(values["dev.accuracy_mean"]) == pytest.approx(0.7) and values["seeds"] == "3"
    data = json.loads(report_text(str(tmp_path / "runs"), "json"))
    (row,) = data["experiments"]
    assert row["seeds"] == 3 and sorted(row["dev.accuracy"]["values"]) == accs
    assert row["sparsity.pruned"]["mean"] == pytest.approx(0.8)
    assert row["sparsity.model"]["mean"] == pytest.approx(0.35) and row["sparsity.model"]["std"] == pytest.approx(0.1)


def test_report_of_one_seed_shows_no_spread(tmp_path):
    d = tmp_path / "runs" / "full" / "seed1"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"best": {"metrics": {"dev": {"accuracy": 0.8941}}},
                                                "train_seconds": 12.0}))
    text = report_text(str(tmp_path / "runs"), "markdown")
    assert "0.8941 (one seed)" in text and "12.0 (one seed)" in text and "±" not in text.splitlines()[-1]


DDP_SCRIPT = """
import sys
from nanoft.train import Trainer, TrainConfig
out, world = sys.argv[1], int(sys.argv[2])
cfg = TrainConfig(train_file=sys.argv[3], dev_file=sys.argv[4], text_columns=["text"], model=sys.argv[5],
                  batch_size=8 * (2 // world), max_steps=4, lr=1e-3, max_length=32, output=out, quiet=True,
                  precision="fp32", seed=0, sampler="random", eval_every=4)
Trainer(cfg, device="cpu").fit()
"""


def test_ddp_two_processes_equal_one_process_with_double_batch(tiny_task, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    common = [str(tiny_task["data"] / "train.tsv"), str(tiny_task["data"] / "dev.tsv"), str(tiny_task["model_nodrop"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "1", *common],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run(torchrun + [str(script), str(tmp_path / "two"), "2", *common],
                            capture_output=True, text=True, env=env, timeout=300)
    assert double.returncode == 0, double.stderr
    a = SafetensorsFile(tmp_path / "one" / "checkpoint" / "model.safetensors")
    b = SafetensorsFile(tmp_path / "two" / "checkpoint" / "model.safetensors")
    for key in a.keys():
        torch.testing.assert_close(a.tensor(key), b.tensor(key), atol=1e-5, rtol=1e-4)
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert rb["world_size"] == 2
    assert ra["best"]["metrics"]["dev"]["accuracy"] == rb["best"]["metrics"]["dev"]["accuracy"]


def test_plan_of_the_techniques_preset_and_its_task_filter():
    from nanoft.errors import ConfigError
    from nanoft.experiment import plan

    preset = os.path.join(os.path.dirname(__file__), "..", "experiments", "techniques.toml")
    _, runs = plan(preset)
    assert len(runs) == 7 * 2 * 5  # experiments × tasks × seeds
    _, rte = plan(preset, tasks=["rte"])
    assert len(rte) == 35 and {r["config"].task for r in rte} == {"rte"}
    assert all(str(r["output"]).startswith(os.path.join("runs", "techniques", "rte")) for r in rte)
    with pytest.raises(ConfigError, match="'mnli' is not in the file's tasks"):
        plan(preset, tasks=["mnli"])


def test_a_run_on_the_default_model_resumes(tiny_config, tmp_path):
    """config.toml records the default checkpoint's resolved path; resuming with model unset must match it."""
    from nanoft.train import Trainer

    config = tiny_config(model=None, max_steps=4, max_length=16, eval_every=2)
    Trainer(config).fit(stop_at_step=2)
    resumed = Trainer(config.replace(resume=True))
    assert resumed.step == 2
    assert resumed.fit()["steps"] == 4


def test_an_interrupted_run_stops_the_whole_sequence(tiny_task, tmp_path, monkeypatch):
    from nanoft.train import Trainer, TrainingInterrupted

    started = []

    def interrupted_fit(self, stop_at_step=None):
        started.append(self.config.seed)
        raise TrainingInterrupted("interrupted at step 1; checkpoint saved", path=str(self.run_dir))

    monkeypatch.setattr(Trainer, "fit", interrupted_fit)
    exp = write_experiment(tmp_path, tiny_task, """
        [experiments.ok]
    """)
    with pytest.raises(TrainingInterrupted, match=r"ok seed 1: interrupted at step 1.*run the same command again"):
        run_experiments(str(exp))
    assert started == [1]  # seed 2 never started


def test_reset_peak_memory_starts_a_new_cpu_peak():
    """Runs that share a process (nanoft run, bench peft) must not inherit each other's peak RSS."""
    from nanoft.train.runtime import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    big = torch.ones(300 * 2**20 // 4)  # 300 MiB, every page touched
    with_big = peak_memory_mb(cpu)
    del big
    assert reset_peak_memory(), "Linux resets the peak RSS through /proc/self/clear_refs"
    assert peak_memory_mb(cpu) < with_big - 200


def test_report_by_task_is_an_experiment_by_task_matrix(tmp_path):
    scores = {("cola", "base"): [0.2, 0.4], ("cola", "llrd"): [0.3, 0.3], ("rte", "base"): [0.5, 0.7]}
    metric = {"cola": "matthews_corrcoef", "rte": "accuracy"}
    for (task, name), values in scores.items():
        for seed, score in enumerate(values, 1):
            d = tmp_path / "runs" / task / name / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({
                "task": task, "main_metric": metric[task], "best": {"score": score, "metrics": {}},
                "train_seconds": 10.0 * seed}))
    text = report_text(str(tmp_path / "runs"), "markdown", by_task=True)
    header, _, base, llrd = text.splitlines()
    assert "cola matthews_corrcoef (mean ± std / max)" in header and "rte accuracy (mean ± std / max)" in header
    cells = [c.strip() for c in base.strip("|").split("|")]
    assert cells == ["base", "2", "0.3000 ± 0.1414 / 0.4000", "15", "2", "0.6000 ± 0.1414 / 0.7000", "15"]
    assert [c.strip() for c in llrd.strip("|").split("|")][4:] == ["0", "-", "-"]  # llrd never ran on rte


def test_report_compare_states_which_differences_exceed_two_standard_errors(tmp_path):
    """Hand-computed: a = (0.80, 0.82, 0.84) mean 0.82 std 0.02; b = (0.70, 0.74, 0.78) mean 0.74 std 0.04;
    c = (0.81, 0.83) mean 0.82 std 0.01414. a - b = 0.08, se = sqrt(0.02²/3 + 0.04²/3) = 0.025820 (t 3.098 > 2:
    exceeds); a - c = 0, se = sqrt(0.02²/3 + 0.01414²/2) = 0.015275 (does not)."""
    from nanoft.errors import ConfigError
    from nanoft.experiment import collect, comparisons

    scores = {"a": [0.80, 0.82, 0.84], "b": [0.70, 0.74, 0.78], "c": [0.81, 0.83]}
    for name, values in scores.items():
        for seed, acc in enumerate(values, 1):
            d = tmp_path / "runs" / "imdb" / name / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({"test": {"accuracy": acc, "loss": 0.3}}))
    rows = {(r["a"], r["b"]): r for r in comparisons(collect(str(tmp_path / "runs")), "test.accuracy")}
    assert set(rows) == {("imdb/a", "imdb/b"), ("imdb/a", "imdb/c"), ("imdb/b", "imdb/c")}
    ab, ac = rows[("imdb/a", "imdb/b")], rows[("imdb/a", "imdb/c")]
    assert ab["diff"] == pytest.approx(0.08) and ab["se"] == pytest.approx(0.025820, abs=1e-6)
    assert ab["welch_t"] == pytest.approx(3.0984, abs=1e-4) and ab["exceeds_2se"]
    # Welch-Satterthwaite df: (v1 + v2)² / (v1²/2 + v2²/2), v1 = 0.0004/3, v2 = 0.0016/3  -> 2.9412
    assert ab["welch_df"] == pytest.approx(2.9412, abs=1e-4)
    assert ac["diff"] == pytest.approx(0.0, abs=1e-12) and ac["se"] == pytest.approx(0.015275, abs=1e-6)
    assert not ac["exceeds_2se"]
    text = report_text(str(tmp_path / "runs"), "markdown", compare="test.accuracy")
    line = next(l for l in text.splitlines() if "imdb/a" in l and "imdb/b" in l)
    assert [c.strip() for c in line.strip("|").split("|")][6:] == ["0.0800", "0.0258", "3.10", "2.9", "yes"]
    one = tmp_path / "runs" / "imdb" / "single" / "seed1"
    one.mkdir(parents=True)
    (one / "results.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
    rows = {(r["a"], r["b"]): r for r in comparisons(collect(str(tmp_path / "runs")), "test.accuracy")}
    assert rows[("imdb/a", "imdb/single")]["exceeds_2se"] is None  # one seed: no spread to judge by
    with pytest.raises(ConfigError, match="no run has the metric 'dev.accuracy'.*test.accuracy"):
        comparisons(collect(str(tmp_path / "runs")), "dev.accuracy")


def test_info_describes_a_run_directory_by_its_best_model(tiny_config, tmp_path):
    """`nanoft info RUN` describes RUN/best (what eval and predict use), with the tokenizer the run trained with."""
    from click.testing import CliRunner

    from nanoft.cli import cli
    from nanoft.train import Trainer

    config = tiny_config(max_steps=2, eval_every=2)
    Trainer(config).fit()
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["info", str(run)])
    assert result.exit_code == 0, result.output
    direct = CliRunner().invoke(cli, ["info", str(run / "best")])
    model_line = next(line for line in result.output.splitlines() if line.startswith("model:"))
    assert model_line.split()[1] == str(run / "best") and f"run of {config.model}" in model_line
    # everything after the model line equals describing best/ directly: same sizes, parameter count, tokenizer
    assert result.output.splitlines()[1:] == direct.output.splitlines()[1:]
    assert "tokenizer:  none" not in result.output


@pytest.mark.parametrize("preset", sorted(os.listdir(os.path.join(os.path.dirname(__file__), "..", "experiments"))))
def test_every_committed_preset_plans_valid_runs_whose_teachers_are_runs_of_the_same_study(preset):
    """The recipes behind the results files stay runnable: each run's options validate, its output lies under the
    file's root, and a --distill-from teacher is a run the same file plans first or a run linked under its root."""
    from pathlib import Path

    from nanoft.experiment import plan

    root, runs = plan(os.path.join(os.path.dirname(__file__), "..", "experiments", preset))
    assert runs and len({str(r["output"]) for r in runs}) == len(runs)  # no two runs share a folder
    for i, r in enumerate(runs):
        config = r["config"].validate()
        assert Path(r["output"]).is_relative_to(root) and config.seed == r["seed"]
        if config.distill_from is not None:
            teacher = Path(config.distill_from)
            assert teacher.is_relative_to(root), f"{r['name']}: teacher {teacher} is outside {root}"
            planned = [k for k, other in enumerate(runs) if Path(other["output"]) == teacher]
            assert not planned or planned[0] < i, f"{r['name']} is planned before its teacher {teacher}"
