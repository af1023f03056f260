"""`nanoft glue`: every GLUE task in the data folder fine-tuned with one recipe and several seeds, and the GLUE
table computed from the runs (max over seeds for the small tasks, mean for the rest, absent tasks absent)."""
from __future__ import annotations

import csv
import json
import random
import statistics

import pytest
from click.testing import CliRunner

from nanoft.cli import cli
from nanoft.glue import GLUE, present_tasks

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "movie", "was", "plot", "acting", "very"]


def write_glue(directory, n=40, seed=0):
    """A fake GLUE folder with two tasks: sst2 (single sentences) and rte (pairs, label names)."""
    rng = random.Random(seed)

    def sentence():
        return " ".join(rng.choice(WORDS[6:]) for _ in range(rng.randint(2, 8)))

    def labelled():  # 1 iff the sentence holds a positive word: learnable in a few steps
        label = rng.randint(0, 1)
        words = sentence().split() + [rng.choice(WORDS[:3] if label else WORDS[3:6])]
        rng.shuffle(words)
        return f"{' '.join(words)}\t{label}"

    for split in ("train", "dev"):
        (directory / "sst2").mkdir(parents=True, exist_ok=True)
        rows = [labelled() for _ in range(n)]
        (directory / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
        (directory / "RTE").mkdir(exist_ok=True)  # the GLUE release's folder name
        names = {"0": "not_entailment", "1": "entailment"}
        rows = [f"{i}\t{sentence()}\t{text}\t{names[label]}"  # sentence2 and label as SST-2's: learnable
                for i, (text, label) in enumerate(labelled().split("\t") for _ in range(n))]
        (directory / "RTE" / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "\n".join(rows) + "\n")
    (directory / "cola").mkdir()
    (directory / "cola" / "train.tsv").write_text("sentence\tlabel\nthe movie\t1\n")  # no dev file: absent


def test_present_tasks_of_the_shared_data(data_dir):
    assert present_tasks(str(data_dir)) == ["cola", "rte", "sst2"]


@pytest.mark.slow
def test_glue_table_equals_a_hand_computation(tiny_task, tmp_path):
    data = tmp_path / "glue"
    write_glue(data)
    root = tmp_path / "runs"
    args = ["glue", "--model", str(tiny_task["model"]), "--data-dir", str(data), "--seeds", "1,2",
            "--lr", "1e-2", "--batch-size", "8", "--max-length", "32", "--output-root", str(root),
            "--option", "max_steps=6", "--train-subset", "16", "--option", "eval_every=6", "--option", "precision=fp32",
            "--option", "save_best=false", "--dev-text", str(data / "sst2" / "dev.tsv"),
            "--output", str(tmp_path / "table")]
    done = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    runs = next(root.iterdir())
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["rte", "sst2"]

    def finals(task, split="dev"):  # each seed's last evaluation, read straight from its results.json
        return [json.loads((runs / task / "glue" / f"seed{s}" / "results.json").read_text())["final"][split]
                for s in (1, 2)]

    sst2 = [100 * r["accuracy"] for r in finals("sst2")]
    rte = [100 * r["accuracy"] for r in finals("rte")]
    recipe = (runs / "rte" / "glue" / "seed2" / "config.toml").read_text()  # the recipe reached every run
    assert all(line in recipe.splitlines()
               for line in ("lr = 0.01", "batch_size = 8", "seed = 2", "max_steps = 6", "train_subset = 16"))
    want = {  # the glue row: mean for SST-2, max over seeds for RTE; the averages over the 2 tasks present
        "SST-2 acc": statistics.mean(sst2), "RTE acc": max(rte),
        "avg w/o WNLI": (statistics.mean(sst2) + max(rte)) / 2, "avg all": (statistics.mean(sst2) + max(rte)) / 2}
    mean_row = {"SST-2 acc": statistics.mean(sst2), "RTE acc": statistics.mean(rte),
                "avg w/o WNLI": (statistics.mean(sst2) + statistics.mean(rte)) / 2}
    std_row = {"SST-2 acc": statistics.stdev(sst2), "RTE acc": statistics.stdev(rte)}
    rows = list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines()))
    assert [r["model"] for r in rows] == [str(tiny_task["model"]) + s for s in ("", " (mean over seeds)",
                                                                               " (std over seeds)")]
    for row, expected in zip(rows, (want, mean_row, std_row)):
        for column, value in expected.items():
            assert float(row[column]) == pytest.approx(value, rel=1e-5, abs=1e-9), column
    absent = [h for g in GLUE if g.name not in ("sst2", "rte") for h, _, _ in g.columns]
    assert all(row[h] == "absent" for row in rows for h in absent)
    assert rows[0]["tasks_w/o_WNLI"] == "2" and rows[0]["tasks_all"] == "2"
    assert rows[0]["perplexity"] == ""  # a classification checkpoint has no masked-LM head: no perplexity
    markdown = (tmp_path / "table.md").read_text()
    assert "avg w/o WNLI (2/8 tasks)" in markdown and markdown.count("absent") == 3 * len(absent)
    assert f"{max(rte):.1f}" in markdown.splitlines()[2]
    again = CliRunner().invoke(cli, args[:-4] + ["--no-run", "--format", "csv"], catch_exceptions=False)
    assert again.output.strip() == (tmp_path / "table.csv").read_text().strip()  # tabulated from the same runs


def test_seeds_combine_as_glue_reports_do():
    """Max over seeds (the seed with the best task score, all its metrics) for the small tasks, mean for the
    rest; a task's score is the mean of its metrics; the averages cover the tasks present, WNLI aside."""
    from nanoft.glue import table_row

    runs = {
        "rte": [{"dev": {"accuracy": 0.6}}, {"dev": {"accuracy": 0.7}}, {"dev": {"accuracy": 0.5}}],
        "mrpc": [{"dev": {"f1": 0.9, "accuracy": 0.5}}, {"dev": {"f1": 0.8, "accuracy": 0.7}}],  # scores .70, .75
        "mnli": [{"dev_matched": {"accuracy": 0.8}, "dev_mismatched": {"accuracy": 0.6}},
                 {"dev_matched": {"accuracy": 0.7}, "dev_mismatched": {"accuracy": 0.9}}],
        "wnli": [{"dev": {"accuracy": 0.4}}, {"dev": {"accuracy": 0.3}}],
    }
    row = table_row(runs, "glue")
    assert row["RTE acc"] == pytest.approx(70) and row["WNLI acc"] == pytest.approx(40)
    assert (row["MRPC F1"], row["MRPC acc"]) == (pytest.approx(80), pytest.approx(70))  # one seed's pair
    assert (row["MNLI m"], row["MNLI mm"]) == (pytest.approx(75), pytest.approx(75))
    assert row["avg w/o WNLI"] == pytest.approx((70 + 75 + 75) / 3)
    assert row["avg all"] == pytest.approx((70 + 75 + 75 + 40) / 4)
    assert row["CoLA MCC"] is None and row["_tasks"] == (3, 4)
    mean = table_row(runs, "mean")
    assert mean["RTE acc"] == pytest.approx(60) and mean["MRPC F1"] == pytest.approx(85)
    assert mean["avg all"] == pytest.approx((60 + 72.5 + 75 + 35) / 4)
    std = table_row(runs, "std")
    assert std["RTE acc"] == pytest.approx(statistics.stdev([60, 70, 50]))


def test_dev_tasks_perplexity_is_what_the_pretraining_run_recorded(tiny_task, glue_like_data, tmp_path):
    """A model pretrained with --task sst2,cola and `--dev-tasks sst2,cola` see the same held-out texts under the
    same fixed mask: the table's perplexity equals the run's own final evaluation (fp32 both)."""
    from nanoft.glue import model_perplexity
    from nanoft.train.pretrain import PretrainConfig, pretrain

    results = pretrain(PretrainConfig(task="sst2,cola", data_dir=str(glue_like_data), model=str(tiny_task["model"]),
                                      max_length=16, batch_size=8, max_steps=3, lr=3e-3, output=str(tmp_path / "run"),
                                      quiet=True, seed=0, precision="fp32"), progress=False)
    recorded = results["final"]["dev"]["perplexity"]
    got = model_perplexity(str(tmp_path / "run" / "best"), None, 16, "sst2,cola", str(glue_like_data))
    assert got == pytest.approx(recorded, rel=1e-5)
    only_sst2 = model_perplexity(str(tmp_path / "run" / "best"), None, 16, "sst2", str(glue_like_data))
    assert only_sst2 != pytest.approx(recorded, rel=1e-4)  # the task list decides the texts


def test_dev_text_and_dev_tasks_together_are_refused(tmp_path):
    done = CliRunner().invoke(cli, ["glue", "--dev-text", "x.txt", "--dev-tasks", "sst2", "--no-run",
                                    "--output-root", str(tmp_path)])
    assert done.exit_code != 0 and "both --dev-text and --dev-tasks" in str(done.exception or done.output)


def test_unknown_dev_task_names_the_known_tasks_and_points_to_dev_text(tmp_path):
    done = CliRunner().invoke(cli, ["glue", "--dev-tasks", "sst2,nope", "--no-run", "--output-root", str(tmp_path)])
    message = str(done.exception or done.output)
    assert done.exit_code != 0 and "--dev-tasks" in message and "nope" in message and "sst2" in message
    assert "--dev-text" in message and "--text-file" not in message
