"""`nanoft bench sparse-runs` against a hand computation on run folders written here, and `run_dirs` following
a linked baseline exactly once."""
from __future__ import annotations

import json
import os
import statistics

import pytest

from nanoft.train.rundir import run_dirs


def write_run(folder, config: str, best: float, final: float, sparsity=None, speed=100.0):
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(config)
    results = {"best": {"metrics": {"dev": {"accuracy": best}}}, "final": {"dev": {"accuracy": final}},
               "examples_per_s": speed}
    if sparsity:
        results["sparsity"] = {k: {"sparsity": v} for k, v in sparsity.items()}
    (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture
def study(tmp_path):
    other = tmp_path / "other" / "sst2" / "full"  # a dense baseline made by another study, linked in
    for seed, acc in ((1, 0.90), (2, 0.92), (3, 0.91)):
        write_run(other / f"seed{seed}", f"seed = {seed}\n", acc, acc - 0.01, speed=100.0 + seed)
    root = tmp_path / "sparse" / "sst2"
    root.mkdir(parents=True)
    os.symlink(other, root / "dense")
    os.symlink(tmp_path / "sparse", root / "loop")  # a link back up the tree is not walked twice
    counts = {"pruned": 0.8, "encoder_linear": 0.8, "model": 0.374}
    for seed, acc in ((1, 0.88), (2, 0.89), (3, 0.87)):
        write_run(root / "rigl80" / f"seed{seed}", f'seed = {seed}\nprune = "rigl"\nsparsity = 0.8\n'
                  f'distill_from = "x"\nepochs = 2\n', acc, acc - 0.02, counts, speed=80.0)
    write_run(root / "magnitude80" / "seed1", 'seed = 1\nprune = "magnitude"\nsparsity = 0.8\n', 0.85, 0.85, counts)
    return tmp_path / "sparse"


def test_run_dirs_follow_links_once(study):
    names = [(r.path.parent.name, r.path.name) for r in run_dirs(study)]
    assert sorted(names) == sorted([("dense", f"seed{s}") for s in (1, 2, 3)] +
                                   [("rigl80", f"seed{s}") for s in (1, 2, 3)] + [("magnitude80", "seed1")])


def test_sparse_runs_table_equals_a_hand_computation(study, tmp_path, monkeypatch):
    from nanoft.bench import common
    from nanoft.bench.sparse_runs import main

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    main([str(study), "--metric", "accuracy", "--name", "sparse_test"])
    rows = {r["experiment"]: r for r in json.loads((tmp_path / "sparse_test.json").read_text())["rows"]}
    dense, sparse = [0.90, 0.92, 0.91], [0.88, 0.89, 0.87]
    row = rows["rigl80"]
    assert row["best"] == f"{statistics.mean(sparse):.4f} ± {statistics.stdev(sparse):.4f}"
    assert row["final"] == f"{statistics.mean(sparse) - 0.02:.4f} ± {statistics.stdev(sparse):.4f}"
    assert row["of_dense"] == f"{100 * statistics.mean(sparse) / statistics.mean(dense):.1f}%"
    se = (statistics.variance(sparse) / 3 + statistics.variance(dense) / 3) ** 0.5
    assert row["diff_points"] == pytest.approx(100 * (statistics.mean(sparse) - statistics.mean(dense)), abs=0.005)
    assert row["welch_t"] == pytest.approx((statistics.mean(sparse) - statistics.mean(dense)) / se, abs=0.005)
    assert (row["pruned_%"], row["encoder_linear_%"], row["model_%"]) == (80.0, 80.0, 37.4)
    assert row["kd"] == "yes" and row["prune"] == "rigl" and row["seeds"] == [1, 2, 3] and row["epochs"] == 2
    assert rows["dense"]["examples_per_s"] == pytest.approx(102.0) and rows["dense"]["pruned_%"] == "-"
    assert rows["magnitude80"]["welch_t"] == "-" and rows["magnitude80"]["kd"] == "no"  # one seed: no t


def test_sparse_runs_without_the_dense_experiment_is_one_line(tmp_path):
    from nanoft.bench.sparse_runs import main
    from nanoft.errors import ConfigError

    write_run(tmp_path / "runs" / "rigl80" / "seed1", "seed = 1\n", 0.9, 0.9)
    with pytest.raises(ConfigError, match="no 'dense' experiment"):
        main([str(tmp_path / "runs")])


def test_results_record_a_command_that_splits_back_into_the_arguments_given(study, tmp_path, monkeypatch):
    import shlex
    import sys

    from nanoft.bench import common
    from nanoft.bench.sparse_runs import main

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    args = [str(study), "--metric", "accuracy", "--name", "quoted", "--notes", str(tmp_path / "my notes.md")]
    (tmp_path / "my notes.md").write_text("it's noted")
    monkeypatch.setattr(sys, "argv", ["/somewhere/.venv/bin/nanoft", "bench", "sparse-runs"] + args)
    main(args)
    command = json.loads((tmp_path / "quoted.json").read_text())["command"]
    assert shlex.split(command) == ["nanoft", "bench", "sparse-runs"] + args
