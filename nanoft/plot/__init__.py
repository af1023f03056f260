"""Pictures: training curves of runs and figures of benchmark results (`nanoft plot`).

Needs matplotlib (`pip install nanoft[plot]`), imported on first use: `import nanoft.plot` works without
it, and drawing without it is one ConfigError saying how to install it. Each function returns a
`matplotlib.figure.Figure` (no pyplot), so a caller can restyle it and a test can read back what was drawn;
`save(fig, "x.png" | "x.svg")` writes it, SVG byte for byte the same for the same input.

    from nanoft.plot import plot_runs, plot_bench, save
    save(plot_runs(["runs/techniques/cola"], y="dev.matthews_corrcoef"), "cola.svg")
    save(plot_bench("bench/results/attention_cpu.json"), "attention.png")
"""
from nanoft.plot.bench import kind_of, log_log_slope, plot_bench
from nanoft.plot.runs import collect_series, find_runs, group_runs, plot_runs
from nanoft.plot.style import render, require_matplotlib, save

__all__ = ["collect_series", "find_runs", "group_runs", "kind_of", "log_log_slope", "plot_bench", "plot_runs",
           "render", "require_matplotlib", "save"]
