"""Bad input a new user gives: one line on stderr (what is wrong, how to fix it), a non-zero exit, no traceback
and no silent fallback (a random head's predictions, ignored options, an endless empty epoch)."""
from __future__ import annotations

import json
import sys

import pytest

from nanoft.cli import main
from nanoft.errors import ConfigError
from nanoft.train import Trainer, TrainConfig


def fails_in_one_line(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["nanoft", *args])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code != 0, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_task):
    """A tiny 2-label run (2 steps) to evaluate and predict with."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    Trainer(TrainConfig(train_file=str(tiny_task["data"] / "train.tsv"), dev_file=str(tiny_task["data"] / "dev.tsv"),
                        text_columns=["text"], label_column="label", model=str(tiny_task["model"]), max_steps=2,
                        batch_size=8, max_length=32, output=str(out), quiet=True, precision="fp32")).fit()
    return out


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("a good film\na bad film\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("args,says", [
    (["--batch-size", "0"], "--batch-size"),
    (["--max-length", "-5"], "--max-length"),
    (["--max-length", "1000"], "longer than the model's"),
    (["--output", "p.xlsx"], "cannot write predictions as .xlsx"),
])
def test_predict_refuses_bad_options(trained_run, texts, tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the repository
    assert says in fails_in_one_line(monkeypatch, capsys, "predict", str(trained_run), "--input", texts, *args)


def test_predict_refuses_a_folder_that_is_no_model(tmp_path, texts, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    err = fails_in_one_line(monkeypatch, capsys, "predict", str(tmp_path / "empty"), "--input", texts)
    assert "model" in err and "empty" in err


def test_predict_refuses_a_checkpoint_without_a_trained_head(tiny_task, tmp_path, texts, monkeypatch, capsys):
    """A pretrained encoder saved without a head (as sentence encoders ship): its 'predictions' would be random."""
    import shutil

    import nanoft
    from nanoft.weights import load_model

    headless = tmp_path / "encoder"
    nanoft.save_model(load_model(tiny_task["model"], head=None), headless)
    shutil.copy(tiny_task["model"] / "vocab.txt", headless / "vocab.txt")
    err = fails_in_one_line(monkeypatch, capsys, "predict", str(headless), "--input", texts)
    assert "no trained classification head" in err and "nanoft train" in err


def test_eval_refuses_a_task_with_another_label_count(trained_run, tmp_path, monkeypatch, capsys):
    data = tmp_path / "three"
    data.mkdir()
    rows = "".join(f"text {i}\t{i % 3}\n" for i in range(12))
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("text\tlabel\n" + rows, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    err = fails_in_one_line(monkeypatch, capsys, "eval", str(trained_run), "--task", "mnli", "--data-dir", str(data))
    assert "labels" in err


def test_zero_or_negative_counts_are_refused(tiny_config):
    for bad in (dict(train_subset=0), dict(train_subset=-3), dict(max_steps=0), dict(eval_batch_size=0)):
        name = next(iter(bad))
        with pytest.raises(ConfigError, match=f"{name} must be ≥ 1"):
            tiny_config(**bad).validate()


def test_options_of_a_method_that_is_not_chosen_are_refused(tiny_config):
    with pytest.raises(ConfigError, match="without --peft"):
        tiny_config(peft_options={"r": 4}).validate()
    with pytest.raises(ConfigError, match="without --attention"):
        tiny_config(attention_options={"k": 4}).validate()


def test_toml_values_of_the_wrong_type_name_the_file_and_key(tmp_path, monkeypatch, capsys):
    config = tmp_path / "run.toml"
    config.write_text('task = "sst2"\nlr = "1e-4"\n', encoding="utf-8")
    err = fails_in_one_line(monkeypatch, capsys, "train", "--config", str(config))
    assert str(config) in err and "lr must be a number" in err
    config.write_text('task = "sst2"\nlora_r = 4\n', encoding="utf-8")
    err = fails_in_one_line(monkeypatch, capsys, "train", "--config", str(config))
    assert "peft_options = {r = ...}" in err


@pytest.mark.parametrize("top,experiments,says", [
    ('seeds = ["a"]\n', '[experiments.a]\nlr = 1e-4\n', "seeds must be integers"),
    ('seeds = 3\n', '[experiments.a]\nlr = 1e-4\n', "seeds is 3"),
    ('', '[experiments]\na = 3\n', "experiments.a is 3"),
    ('', '[experiments.a]\nlr = "fast"\n', "lr must be a number"),
])
def test_experiment_files_with_wrong_shapes_are_one_line(tmp_path, monkeypatch, capsys, top, experiments, says):
    path = tmp_path / "exp.toml"
    path.write_text(top + '[defaults]\ntask = "sst2"\n' + experiments, encoding="utf-8")
    assert says in fails_in_one_line(monkeypatch, capsys, "run", str(path))


def test_run_seeds_option_must_be_integers(tmp_path, monkeypatch, capsys):
    path = tmp_path / "exp.toml"
    path.write_text('[defaults]\ntask = "sst2"\n[experiments.a]\nlr = 1e-4\n', encoding="utf-8")
    assert "--seeds '1,x'" in fails_in_one_line(monkeypatch, capsys, "run", str(path), "--seeds", "1,x")


def test_config_toml_written_by_a_run_is_valid_json_free_of_paths_objects(trained_run):
    """(regression) the run's own records stay readable: task.json parses and config.toml round-trips."""
    from nanoft.train.config import read_toml

    TrainConfig.from_dict(read_toml(trained_run / "config.toml"), source="config.toml").validate()
    assert json.loads((trained_run / "task.json").read_text())


def test_predict_tsv_output_reads_back_as_input(trained_run, tmp_path):
    """A text with a tab, a quote and a line break: the .tsv predictions read back through nanoft's TSV reader,
    one row per input row (tabs and line breaks in cells become spaces; .csv/.jsonl keep texts exactly)."""
    from nanoft.commands import predict_file
    from nanoft.tasks.files import read_table

    source = tmp_path / "in.jsonl"
    rows = ['a "quoted"\tword', "two\nlines", "plain"]
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows), encoding="utf-8")
    out = tmp_path / "out.tsv"
    predict_file(str(trained_run), str(source), str(out), [], False, 8, None)
    table = read_table(out)
    assert table.column("text") == ['a "quoted" word', "two lines", "plain"]
    again = tmp_path / "again.jsonl"
    predict_file(str(trained_run), str(out), str(again), [], False, 8, None)
    assert [json.loads(line)["text"] for line in again.read_text().splitlines()] == table.column("text")


def test_a_pair_run_refuses_single_texts(tiny_task, tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\tlabel\n" + "".join(f"left {i}\tright {i}\t{i % 2}\n" for i in range(16)), encoding="utf-8")
    out = tmp_path / "pair-run"
    Trainer(TrainConfig(train_file=str(data), text_columns=["a", "b"], label_column="label",
                        model=str(tiny_task["model"]), max_steps=1, batch_size=8, max_length=32, output=str(out),
                        quiet=True, precision="fp32")).fit()
    texts = tmp_path / "single.txt"
    texts.write_text("just one text\n", encoding="utf-8")
    err = fails_in_one_line(monkeypatch, capsys, "predict", str(out), "--input", str(texts))
    assert "sentence pairs" in err and "--text-column A --text-column B" in err
