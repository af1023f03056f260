"""`nanoft plot` (#18): what each figure draws is read back from the figure (line data, band limits, bar
sizes, error bars, legend labels, axis scales), never from pixels; SVG output is the same bytes for the same
input; without matplotlib the command says how to install it in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from nanoft.errors import ConfigError  # noqa: E402
from nanoft.plot import plot_bench, plot_runs, render, save  # noqa: E402
from nanoft.train.rundir import RunDir  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
CLI = [sys.executable, "-c", "from nanoft.cli import main; main()"]


def make_run(path: Path, records, results=None) -> RunDir:
    """A run directory written through RunDir, as the Trainer writes one."""
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.write_config('task = "sst2"\n')
    for record in records:
        run.log(record)
    if results is not None:
        run.write_results(results)
    return run


def train_records(steps, losses, batch=8, per_s=100.0):
    return [{"step": s, "epoch": 0.0, "loss": l, "lr": 1e-3 / s, "grad_norm": 2.0 * l, "examples": s * batch,
             "examples_per_s": per_s} for s, l in zip(steps, losses)]


def band_limits(collection, xs):
    """(lower, upper) of a fill_between band at each x, from the polygon's vertices."""
    v = collection.get_paths()[0].vertices
    lower, upper = [], []
    for x in xs:
        ys = v[np.isclose(v[:, 0], x), 1]
        lower.append(ys.min())
        upper.append(ys.max())
    return np.array(lower), np.array(upper)


def legend_labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture
def runs(tmp_path):
    """runs/lr-high/seed{1,2,3} (seed 3 logged no step 6) and runs/lr-low (one run, not a seed folder)."""
    root = tmp_path / "runs"
    losses = {1: [0.9, 0.7, 0.5, 0.4], 2: [1.0, 0.6, 0.6, 0.3], 3: [0.8, 0.8, 0.2]}
    for seed, values in losses.items():
        steps = [2, 4, 6, 8] if seed != 3 else [2, 4, 8]
        records = train_records(steps, values, per_s=50.0 * seed)
        records.insert(2, {"step": 5, "epoch": 0.5, "eval": {"dev": {"accuracy": 0.5 + 0.1 * seed, "loss": 0.6}}})
        make_run(root / "lr-high" / f"seed{seed}", records)
    make_run(root / "lr-low", train_records([2, 4, 6, 8], [1.1, 1.0, 0.95, 0.9]) +
             [{"step": 8, "epoch": 1.0, "eval": {"dev": {"accuracy": 0.55, "loss": 0.7}}}],
             results={"world_size": 2})
    return root, losses


def test_seeds_of_one_experiment_are_a_mean_with_a_std_band(runs):
    root, losses = runs
    fig = plot_runs([root], y="loss", x="step")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert legend_labels(ax) == ["lr-high (mean ± std, 3 seeds)", "lr-low"]
    # the seeds share steps 2, 4 and 8 (seed 3 has no step 6)
    common = np.array([[losses[s][i] for i in ((0, 1, 3) if s != 3 else (0, 1, 2))] for s in (1, 2, 3)])
    mean, std = common.mean(axis=0), common.std(axis=0, ddof=1)
    np.testing.assert_allclose(lines[0].get_xdata(), [2, 4, 8])
    np.testing.assert_allclose(lines[0].get_ydata(), mean)
    (band,) = ax.collections
    lower, upper = band_limits(band, [2, 4, 8])
    np.testing.assert_allclose(lower, mean - std)
    np.testing.assert_allclose(upper, mean + std)
    np.testing.assert_allclose(lines[1].get_xdata(), [2, 4, 6, 8])  # a single run: its own points, no band
    # a seed given again (here on its own after its folder) is not counted twice
    again = plot_runs([root, root / "lr-high" / "seed1"], y="loss").axes[0]
    assert legend_labels(again) == legend_labels(ax)
    np.testing.assert_allclose(again.get_lines()[0].get_ydata(), mean)
    np.testing.assert_allclose(lines[1].get_ydata(), [1.1, 1.0, 0.95, 0.9])
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "training loss"
    assert ax.get_title() == "Training loss vs optimizer step (4 runs)"
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"


def test_eval_metric_against_examples_and_seconds(runs):
    root, _ = runs
    fig = plot_runs([root / "lr-low"], y="dev.accuracy", x="examples")
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [64] and list(line.get_ydata()) == [0.55]  # step 8 x batch 8
    assert ax.get_ylabel() == "dev accuracy" and ax.get_xlabel() == "training examples seen"
    # an evaluation between two training logs (step 5 between 4 and 6) sits between their example counts;
    # seconds = examples / examples_per_s of each seed (50, 100, 150 ex/s) at that step, averaged over seeds
    fig = plot_runs([root / "lr-high"], y="dev.accuracy", x="seconds")
    (line,) = fig.axes[0].get_lines()
    expected_x = np.mean([5 * 8 / (50.0 * s) for s in (1, 2, 3)])
    np.testing.assert_allclose(line.get_xdata(), [expected_x])
    np.testing.assert_allclose(line.get_ydata(), [np.mean([0.6, 0.7, 0.8])])
    # two processes: examples_per_s is per process, the logged examples count both
    fig = plot_runs([root / "lr-low"], y="loss", x="seconds")
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_xdata(), [s * 8 / 2 / 100.0 for s in (2, 4, 6, 8)])


def test_smoothing_is_a_trailing_mean(runs):
    root, _ = runs
    fig = plot_runs([root / "lr-low"], y="loss", smooth_window=2, log_y=True, title="lr low")
    (ax,) = fig.axes
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1.1, 1.05, 0.975, 0.925])
    assert ax.get_yscale() == "log" and ax.get_title() == "lr low"
    assert ax.get_ylabel() == "training loss (trailing mean of 2 points)"


def test_unknown_y_lists_what_the_runs_logged(runs):
    root, _ = runs
    with pytest.raises(ConfigError) as e:
        plot_runs([root], y="dev.f1")
    assert str(e.value) == ("no run logged 'dev.f1'; found: dev.accuracy, dev.loss, examples_per_s, grad_norm, loss, "
                            "lr (pick --y from those)")
    (root.parent / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run here"):
        plot_runs([root.parent / "empty"])


def test_seeds_without_a_common_step_are_an_error(tmp_path):
    make_run(tmp_path / "exp" / "seed1", train_records([1, 3], [1.0, 0.5]))
    make_run(tmp_path / "exp" / "seed2", train_records([2, 4], [1.0, 0.5]))
    with pytest.raises(ConfigError, match="share no logged step"):
        plot_runs([tmp_path])


def test_a_real_run_logs_examples_and_its_seconds_end_at_train_seconds(tiny_config):
    from nanoft.train import Trainer

    trainer = Trainer(tiny_config(max_steps=6, log_every=2))
    results = trainer.fit()
    records = [r for r in trainer.run_dir.metrics() if "loss" in r]
    assert [r["examples"] for r in records] == [r["step"] * 8 for r in records]  # 96 rows, batches of 8
    fig = plot_runs([trainer.run_dir.path], y="loss", x="seconds")
    x = fig.axes[0].get_lines()[0].get_xdata()
    assert np.all(np.diff(x) > 0)
    assert x[-1] == pytest.approx(results["train_seconds"], abs=2e-3)


# ------------------------------------------------------------------------------------------------ bench
def test_attention_scaling_log_log_with_fitted_slopes():
    data = json.loads((RESULTS / "attention_cpu.json").read_text())
    fig = plot_bench(RESULTS / "attention_cpu.json")
    ax_time, ax_mem = fig.axes
    for ax in (ax_time, ax_mem):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert ax.get_xlabel() == "sequence length n (tokens)"
    assert ax_time.get_ylabel() == "forward + backward time (ms)" and ax_mem.get_ylabel() == "peak memory added (MiB)"
    kinds = list(data["meta"]["summary"])
    # the slopes in the legend are the ones the benchmark fitted and recorded when it ran
    assert legend_labels(ax_time) == [f"{k} (slope {data['meta']['summary'][k]['time_slope']:.2f})" for k in kinds]
    assert legend_labels(ax_mem) == [f"{k} (slope {data['meta']['summary'][k]['mem_slope']:.2f})" for k in kinds]
    full = [r for r in data["rows"] if r["kind"] == "full"]
    np.testing.assert_allclose(ax_time.get_lines()[0].get_xdata(), [r["seq"] for r in full])
    np.testing.assert_allclose(ax_time.get_lines()[0].get_ydata(), [r["fwd_bwd_ms"] for r in full])
    np.testing.assert_allclose(ax_mem.get_lines()[0].get_ydata(), [r["peak_mb"] for r in full])


def test_scaling_slope_of_an_exact_power_law(tmp_path):
    rows = [{"kind": k, "seq": n, "fwd_bwd_ms": c * n ** p, "peak_mb": 0.5 * n}
            for k, c, p in (("quadratic", 3e-6, 2.0), ("linear", 1e-3, 1.0)) for n in (128, 256, 512, 1024, 2048)]
    # a point below n = 512 off the power law: the fit starts at 512 and ignores it
    rows[0]["fwd_bwd_ms"] = 50.0
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps({"name": "scaling", "meta": {"device": "cpu"}, "rows": rows}))
    ax_time, ax_mem = plot_bench(path).axes
    assert legend_labels(ax_time) == ["quadratic (slope 2.00)", "linear (slope 1.00)"]
    assert legend_labels(ax_mem) == ["quadratic (slope 1.00)", "linear (slope 1.00)"]


def bar_heights(ax):
    return [p.get_height() for p in ax.patches]


def error_spans(ax, horizontal=False):
    """(low, high) of each error bar of the axes' first bar container."""
    (container,) = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    segments = container.errorbar.lines[2][0].get_segments()
    return [(s[0][0], s[1][0]) if horizontal else (s[0][1], s[1][1]) for s in segments]


def test_peft_bars_average_seeds_with_error_bars(tmp_path):
    rows = [{"method": m, "seed": s, "accuracy": acc, "trainable_%": pct, "examples_per_s": 100.0 + s}
            for m, pct, accs in (("full", 100.0, (0.80, 0.84, 0.82)), ("lora", 0.9, (0.70, 0.78, 0.74)))
            for s, acc in zip((1, 2, 3), accs)]
    path = tmp_path / "peft.json"
    path.write_text(json.dumps({"name": "peft", "meta": {"task": "sst2", "epochs": 1}, "rows": rows}))
    fig = plot_bench(path)
    ax_metric, ax_share, ax_speed = fig.axes
    widths = [p.get_width() for p in ax_metric.patches]
    np.testing.assert_allclose(widths, [0.82, 0.74])
    std = np.std([0.80, 0.84, 0.82], ddof=1)
    np.testing.assert_allclose(error_spans(ax_metric, horizontal=True)[0], (0.82 - std, 0.82 + std))
    assert [t.get_text() for t in ax_metric.get_yticklabels()] == ["full", "lora"]
    assert ax_metric.get_xlabel() == "dev accuracy"
    assert ax_share.get_xscale() == "log" and ax_share.get_xlabel() == "trainable parameters (% of the model, log)"
    np.testing.assert_allclose(ax_share.collections[0].get_offsets()[:, 0], [100.0, 0.9])
    np.testing.assert_allclose([p.get_width() for p in ax_speed.patches], [102.0, 102.0])
    assert "mean ± std over 3 seeds" in fig.get_suptitle()


def test_committed_peft_result_one_seed_has_no_error_bars():
    data = json.loads((RESULTS / "peft_cola.json").read_text())
    fig = plot_bench(RESULTS / "peft_cola.json")
    ax = fig.axes[0]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [r["matthews_corrcoef"] for r in data["rows"]])
    assert all(getattr(c, "errorbar", None) is None for c in ax.containers)
    assert "no error bars" in fig.get_suptitle()


def test_techniques_bars_from_mean_std_cells():
    data = json.loads((RESULTS / "techniques_quick.json").read_text())
    fig = plot_bench(RESULTS / "techniques_quick.json")
    ax = fig.axes[0]
    assert ax.get_title() == "CoLA MCC" and ax.get_ylabel() == "mean ± std over 3 seeds"
    cells = [r["CoLA MCC (mean ± std)"].split(" ± ") for r in data["rows"]]
    np.testing.assert_allclose(bar_heights(ax), [float(m) for m, _ in cells])
    np.testing.assert_allclose(error_spans(ax), [(float(m) - float(s), float(m) + float(s)) for m, s in cells])
    baseline = ax.get_lines()[-1]  # the baseline's mean, dotted, across the panel
    assert baseline.get_linestyle() == ":" and list(baseline.get_ydata()) == [0.052, 0.052]
    assert [t.get_text() for t in ax.get_xticklabels()] == [r["experiment"] for r in data["rows"]]
    assert len(fig.axes) == 2  # "SWA model MCC" has a value for one experiment only: no panel


def test_techniques_cola_rte_mean_std_objects():
    data = json.loads((RESULTS / "techniques_cola_rte.json").read_text())
    ax_cola, ax_rte = plot_bench(RESULTS / "techniques_cola_rte.json").axes
    assert ax_cola.get_title() == "cola dev matthews_corrcoef" and ax_rte.get_title() == "rte dev accuracy"
    cola = [r["cola dev matthews_corrcoef"] for r in data["rows"]]
    np.testing.assert_allclose(bar_heights(ax_cola), [c["mean"] for c in cola])
    np.testing.assert_allclose(error_spans(ax_cola), [(c["mean"] - c["std"], c["mean"] + c["std"]) for c in cola])
    assert ax_cola.get_ylabel() == "mean ± std over 5 seeds"


def test_techniques_per_seed_rows_are_averaged_with_dots(tmp_path):
    rows = [{"experiment": e, "seed": s, "mcc": v} for e, vals in (("baseline", (0.2, 0.3)), ("reinit", (0.4, 0.5)))
            for s, v in zip((1, 2), vals)]
    path = tmp_path / "tech.json"
    path.write_text(json.dumps({"name": "tech", "rows": rows}))
    (ax,) = plot_bench(path).axes
    np.testing.assert_allclose(bar_heights(ax), [0.25, 0.45])
    s = np.std([0.2, 0.3], ddof=1)
    np.testing.assert_allclose(error_spans(ax)[1], (0.45 - s, 0.45 + s))
    dots = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets()) == 2])
    np.testing.assert_allclose(sorted(dots[:, 1]), [0.2, 0.3, 0.4, 0.5])


def test_training_speed_grouped_bars():
    data = json.loads((RESULTS / "train_speed_cpu.json").read_text())
    fig = plot_bench(RESULTS / "train_speed_cpu.json")
    ax_speed, ax_mem = fig.axes
    sides = list(dict.fromkeys(r["side"] for r in data["rows"]))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == sides
    assert [t.get_text() for t in ax_speed.get_xticklabels()] == ["fp32", "bf16"]
    by = {(r["side"], r["precision"]): r for r in data["rows"]}
    expected = [by[(side, p)]["examples_per_s"] for side in sides for p in ("fp32", "bf16")]
    np.testing.assert_allclose(bar_heights(ax_speed), expected)
    assert ax_speed.get_ylabel() == "training throughput (examples/s)" and ax_mem.get_ylabel() == "peak memory (MiB)"


def test_result_without_a_picture_is_one_line():
    with pytest.raises(ConfigError) as e:
        plot_bench(RESULTS / "tokenize.json")
    assert "no picture for this result file" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ files
def test_svg_is_the_same_bytes_for_the_same_input(runs, tmp_path):
    root, _ = runs
    first = render(plot_runs([root], y="loss"), "svg")
    assert render(plot_runs([root], y="loss"), "svg") == first
    assert b"<dc:date>" not in first and b"font-family" not in first  # no date, glyphs drawn as paths
    assert render(plot_bench(RESULTS / "attention_cpu.json"), "png") == render(
        plot_bench(RESULTS / "attention_cpu.json"), "png")
    # another process, through the CLI (`nanoft plot RUNS` is `nanoft plot runs RUNS`): the same bytes
    out = tmp_path / "loss.svg"
    result = subprocess.run(CLI + ["plot", str(root), "--y", "loss", "--output", str(out)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == first


def test_cli_bench_writes_png_beside_the_result_by_default(tmp_path):
    src = tmp_path / "attention.json"
    src.write_text((RESULTS / "attention_cpu.json").read_text())
    result = subprocess.run(CLI + ["plot", "bench", str(src)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_output_is_one_line(runs, tmp_path):
    root, _ = runs
    with pytest.raises(ConfigError, match=r"name the output \.png or \.svg"):
        save(plot_runs([root]), tmp_path / "loss.pdf")
    assert save(plot_runs([root]), tmp_path / "new" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    result = subprocess.run(CLI + ["plot", str(root), "--x", "hours", "-o", str(tmp_path / "x.png")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "hours" in result.stderr


@pytest.mark.parametrize("args", [["plot", "RUNS", "--y", "loss", "-o", "OUT"],
                                  ["plot", "bench", "RESULT", "-o", "OUT"]])
def test_without_matplotlib_one_line_says_how_to_install_it(runs, tmp_path, monkeypatch, capsys, args):
    from nanoft.cli import main

    root, _ = runs
    out = tmp_path / "x.png"
    argv = [str(root) if a == "RUNS" else str(RESULTS / "attention_cpu.json") if a == "RESULT" else
            str(out) if a == "OUT" else a for a in args]
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # every `import matplotlib...` now fails
    monkeypatch.setattr(sys, "argv", ["nanoft", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install nanoft[plot]" in err and err.startswith("error: ")
    assert not out.exists()
