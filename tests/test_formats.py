"""Parquet and Arrow input (#18): the same examples, labels and batches as the same data in TSV, the same
one-line errors; and `nanoft predict` output a person can read (texts kept, columns found on its own)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
import pyarrow.feather  # noqa: E402
import pyarrow.ipc  # noqa: E402
import pyarrow.parquet  # noqa: E402

from nanoft.data import encode  # noqa: E402
from nanoft.data.collate import batches  # noqa: E402
from nanoft.data.samplers import BucketBatchSampler  # noqa: E402
from nanoft.errors import DataError  # noqa: E402
from nanoft.tasks import from_files, read_table  # noqa: E402

TEXTS = ["a fine film", "awful, really", 'the "plot" was poor', "great acting", "not good at all", "so bad",
         "quite great", "a good story", "poor acting", "very fine"]
PAIRS = [f"second {i}" for i in range(len(TEXTS))]
LABELS = ["pos", "neg", "neg", "pos", "neg", "neg", "pos", "pos", "neg", "pos"]


def write_tsv(path, columns):
    names = list(columns)
    lines = ["\t".join(names)] + ["\t".join(str(columns[n][i]) for n in names) for i in range(len(columns[names[0]]))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_columnar(path, columns, how):
    table = pa.table(columns)
    if how == "parquet":
        pyarrow.parquet.write_table(table, path)
    elif how == "feather":  # Feather v2 = Arrow IPC file
        pyarrow.feather.write_feather(table, path)
    elif how == "feather-v1":
        pyarrow.feather.write_feather(table, path, version=1)
    else:  # Arrow IPC stream, the layout of a Hugging Face `datasets` cache file
        with pyarrow.ipc.new_stream(str(path), table.schema) as writer:
            writer.write_table(table)
    return path


SUFFIX = {"parquet": ".parquet", "feather": ".feather", "feather-v1": ".feather", "stream": ".arrow"}


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def tokenizer(tiny_task):
    from nanoft.weights import load_tokenizer

    return load_tokenizer(tiny_task["model"])


@pytest.mark.parametrize("how", ["parquet", "feather", "feather-v1", "stream"])
@pytest.mark.parametrize("label_kind", ["names", "ints", "floats"])
def test_columnar_gives_the_tsv_examples_labels_and_batches(tmp_path, tokenizer, how, label_kind):
    labels = {"names": LABELS, "ints": [int(x == "pos") for x in LABELS],
              "floats": [0.25 * i for i in range(len(LABELS))]}[label_kind]
    columns = {"id": list(range(len(TEXTS))), "text": TEXTS, "text2": PAIRS, "label": labels}
    tsv_train = write_tsv(tmp_path / "train.tsv", columns)
    tsv_dev = write_tsv(tmp_path / "dev.tsv", {k: v[:4] for k, v in columns.items()})
    col_train = write_columnar(tmp_path / f"train{SUFFIX[how]}", columns, how)
    col_dev = write_columnar(tmp_path / f"dev{SUFFIX[how]}", {k: v[:4] for k, v in columns.items()}, how)

    from_tsv = from_files(tsv_train, tsv_dev, text_columns=("text", "text2"), label_column="label")
    from_col = from_files(col_train, col_dev, text_columns=("text", "text2"), label_column="label")
    assert from_col.format == ("parquet" if how == "parquet" else "arrow")
    assert from_col.label_names == from_tsv.label_names and from_col.is_regression == from_tsv.is_regression
    assert from_col.is_regression == (label_kind == "floats")
    for split in ("train", "dev"):
        a, b = from_tsv.load(None, split), from_col.load(None, split)
        assert b.texts == a.texts and b.text_pairs == a.text_pairs
        np.testing.assert_array_equal(b.labels, a.labels)
        assert b.labels.dtype == a.labels.dtype
        assert list(b.lines) == list(range(1, len(b) + 1))  # rows, numbered from 1
        ea, eb = encode(a, tokenizer, 32, use_cache=False), encode(b, tokenizer, 32, use_cache=False)
        sampler = lambda e: BucketBatchSampler(e.lengths, batch_size=3, seed=5)  # noqa: E731
        got, want = list(batches(eb, sampler(eb), 0)), list(batches(ea, sampler(ea), 0))
        assert len(got) == len(want) > 1
        for x, y in zip(got, want):
            assert x.keys() == y.keys()
            for key in x:
                assert torch.equal(x[key], y[key]), key


def test_columnar_values_read_as_a_tsv_would_hold_them(tmp_path):
    columns = {"text": ["a", None, "c\twith tab"], "flag": [True, False, None], "n": [1, 2, 3],
               "x": [0.5, 1.25, float("nan")], "tags": [[1, 2], [], None]}
    table = read_table(write_columnar(tmp_path / "v.parquet", columns, "parquet"))
    assert table.header == ["text", "flag", "n", "x", "tags"]
    assert table.rows == [["a", "1", "1", "0.5", "[1, 2]"], ["", "0", "2", "1.25", "[]"],
                          ["c\twith tab", "", "3", "nan", ""]]


@pytest.mark.parametrize("how", ["parquet", "stream"])
def test_columnar_missing_column_lists_the_columns_found(tmp_path, how):
    path = write_columnar(tmp_path / f"train{SUFFIX[how]}", {"sentence": TEXTS, "label": LABELS}, how)
    with pytest.raises(DataError) as e:
        from_files(path, text_columns="text", label_column="label")
    assert f"{path}: no column 'text'; columns found: 'sentence', 'label'" in one_line(e)


@pytest.mark.parametrize("how", ["parquet", "feather"])
def test_columnar_bad_label_names_the_row(tmp_path, how):
    train = write_columnar(tmp_path / f"train{SUFFIX[how]}", {"text": TEXTS, "label": LABELS}, how)
    dev = write_columnar(tmp_path / f"dev{SUFFIX[how]}", {"text": ["x", "y", "z"], "label": ["pos", "neg", "meh"]},
                         how)
    task = from_files(train, dev, text_columns="text")
    with pytest.raises(DataError) as e:
        task.load(None, "dev")
    assert f"{dev}:3: label 'meh' not in the label set" in one_line(e)  # row 3 of the file
    assert e.value.line == 3


def test_malformed_parquet_is_one_clear_line(tmp_path):
    good = write_columnar(tmp_path / "good.parquet", {"text": TEXTS * 20, "label": LABELS * 20}, "parquet")
    data = good.read_bytes()
    for cut in (4, len(data) // 3, len(data) // 2, len(data) - 8, len(data) - 1):
        bad = tmp_path / f"cut{cut}.parquet"
        bad.write_bytes(data[:cut])
        with pytest.raises(DataError) as e:
            read_table(bad)
        assert one_line(e).startswith(f"{bad}: not a readable Parquet file")
    tsv_named_parquet = tmp_path / "tsv.parquet"
    tsv_named_parquet.write_text("text\tlabel\nfine\tpos\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_table(tsv_named_parquet)
    assert "not a readable Parquet file" in one_line(e)
    empty = write_columnar(tmp_path / "empty.parquet", {"text": pa.array([], pa.string())}, "parquet")
    with pytest.raises(DataError) as e:
        read_table(empty)
    assert "file has columns but no rows" in one_line(e)


def test_damaged_arrow_files_end_in_an_error_not_a_crash(tmp_path):
    """Arrow IPC is read without copying; damaged offsets must be caught (validate) before values are read,
    which would otherwise crash the process. Seeded byte damage, in a subprocess so a crash shows as one."""
    script = """
import random, sys
import pyarrow as pa, pyarrow.feather, pyarrow.ipc
from nanoft.errors import DataError
from nanoft.tasks import read_table
d = sys.argv[1]
t = pa.table({"text": ["a b c" * 5, "d, e", None] * 30, "label": [0, 1, 1] * 30})
pyarrow.feather.write_feather(t, d + "/f.arrow")
with pyarrow.ipc.new_stream(d + "/s.arrow", t.schema) as w:
    w.write_table(t)
rng, errors = random.Random(0), 0
for name in ("f.arrow", "s.arrow"):
    data = open(d + "/" + name, "rb").read()
    for k in range(300):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        open(d + "/bad.arrow", "wb").write(bytes(b[:rng.randrange(len(b))] if k % 3 == 0 else b))
        try:
            read_table(d + "/bad.arrow")
        except DataError as e:
            assert "\\n" not in str(e)
            errors += 1
print(errors)
"""
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) > 300  # most damage is detected; the rest still reads as a table


def test_without_pyarrow_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    path = write_columnar(tmp_path / "train.parquet", {"text": TEXTS, "label": LABELS}, "parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails as if not installed
    with pytest.raises(DataError) as e:
        read_table(path)
    assert "needs pyarrow" in one_line(e) and "pip install nanoft[parquet]" in str(e.value)


def test_cli_train_on_truncated_parquet_is_one_line(tmp_path):
    good = write_columnar(tmp_path / "good.parquet", {"text": TEXTS, "label": LABELS}, "parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-20])
    result = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "train", "--train-file",
                             str(bad), "--output", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a readable Parquet file" in result.stderr
    assert not (tmp_path / "run").exists()


def test_training_on_parquet_equals_training_on_tsv(tiny_config, tiny_task, tmp_path):
    """End to end: the same rows as Parquet train a run whose logged losses equal the TSV run's exactly."""
    from nanoft.train import Trainer

    def to_parquet(tsv, out):
        table = read_table(tsv)
        columns = {name: [row[i] for row in table.rows] for i, name in enumerate(table.header)}
        columns["label"] = [int(v) for v in columns["label"]]
        return write_columnar(out, columns, "parquet")

    train = to_parquet(tiny_task["data"] / "train.tsv", tmp_path / "train.parquet")
    dev = to_parquet(tiny_task["data"] / "dev.tsv", tmp_path / "dev.parquet")
    runs = {}
    for name, files in (("tsv", (tiny_task["data"] / "train.tsv", tiny_task["data"] / "dev.tsv")),
                        ("parquet", (train, dev))):
        trainer = Trainer(tiny_config(train_file=str(files[0]), dev_file=str(files[1]), max_steps=4, eval_every=4,
                                      output=str(tmp_path / name)))
        trainer.fit()
        runs[name] = [{k: v for k, v in r.items() if k != "examples_per_s"} for r in trainer.run_dir.metrics()]
    assert runs["parquet"] == runs["tsv"] and any("eval" in r for r in runs["tsv"])
    assert json.loads((tmp_path / "parquet" / "task.json").read_text())["task"]["format"] == "parquet"


# ------------------------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def headerless_run(tiny_task, tmp_path_factory):
    """A run trained as in the bug report: `--no-header --text-column 1` (file: label, text)."""
    from nanoft.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("headerless")
    for split in ("train", "dev"):
        table = read_table(tiny_task["data"] / f"{split}.tsv")
        (root / f"{split}.tsv").write_text("".join(f"{label}\t{text}\n" for text, label in table.rows),
                                           encoding="utf-8")
    config = TrainConfig(train_file=str(root / "train.tsv"), dev_file=str(root / "dev.tsv"), no_header=True,
                         text_columns=["1"], label_column="0", model=str(tiny_task["model"]), batch_size=8,
                         max_steps=6, lr=3e-3, max_length=32, output=str(root / "run"), quiet=True, seed=0,
                         precision="fp32")
    Trainer(config).fit()
    return root / "run"


SENTENCES = ["the movie was good", "awful acting, really", 'a "great" plot', "not bad\tat all", "so poor"]


def read_predictions(text: str, delimiter: str = "\t"):
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def test_predict_headerless_run_on_a_headed_input_keeps_texts_and_order(headerless_run, tmp_path):
    from nanoft.commands import predict_file

    # the reported bug: this failed with "no column 1" (the run's position applied to a headed file)
    single = tmp_path / "sentences.tsv"
    single.write_text("sentence\n" + "\n".join(s.replace("\t", " ") for s in SENTENCES) + "\n", encoding="utf-8")
    rows = read_predictions(predict_file(str(headerless_run), str(single), None, [], False, 4, None))
    assert [r["sentence"] for r in rows] == [s.replace("\t", " ") for s in SENTENCES]
    assert [r["index"] for r in rows] == [str(i) for i in range(len(SENTENCES))]
    assert [r["line"] for r in rows] == [str(i + 2) for i in range(len(SENTENCES))]  # line 1: the header
    assert list(rows[0])[:4] == ["index", "line", "label", "label_id"] and list(rows[0])[-1] == "sentence"
    for r in rows:
        probs = [float(v) for k, v in r.items() if k.startswith("p_")]
        assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-4
        assert r["label_id"] == str(int(np.argmax(probs)))
    # an id column and a label column of numbers beside it: the only column holding text is used
    several = tmp_path / "several.csv"
    with open(several, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "stars"])
        writer.writerows([[100 + i, s, i % 5] for i, s in enumerate(SENTENCES)])
    out = tmp_path / "pred.csv"
    predict_file(str(headerless_run), str(several), str(out), [], False, 4, None)
    again = read_predictions(out.read_text(encoding="utf-8"), ",")
    assert [r["review"] for r in again] == SENTENCES  # commas, quotes and the tab kept exactly


def test_predict_txt_parquet_and_tsv_agree(headerless_run, tmp_path):
    """The same texts as .txt (one per line), Parquet and a headerless TSV (the run's own column 1) give the same
    predictions, in the input's order; blank lines of a .txt are not texts, and each row names its line."""
    from nanoft.commands import predict_file

    texts = [s.replace("\t", " ") for s in SENTENCES]
    txt = tmp_path / "in.txt"
    txt.write_text(texts[0] + "\n\n" + "\n".join(texts[1:]) + "\n\n", encoding="utf-8")
    parquet = write_columnar(tmp_path / "in.parquet", {"id": list(range(5)), "text": texts}, "parquet")
    tsv = tmp_path / "in.tsv"
    tsv.write_text("".join(f"9\t{t}\n" for t in texts), encoding="utf-8")  # the training layout: label, text
    outputs = {
        "txt": read_predictions(predict_file(str(headerless_run), str(txt), None, [], False, 4, None)),
        "parquet": read_predictions(predict_file(str(headerless_run), str(parquet), None, [], False, 4, None)),
        "tsv": read_predictions(predict_file(str(headerless_run), str(tsv), None, [], True, 4, None)),
    }
    assert [r["text"] for r in outputs["txt"]] == texts
    assert [r["text"] for r in outputs["parquet"]] == texts
    assert [r["text"] for r in outputs["tsv"]] == texts  # headerless input: its text column is called "text"
    # each prediction says where its text is: a .txt's blank line 2 is skipped; Parquet rows and a headerless TSV
    # count from 1
    assert [r["line"] for r in outputs["txt"]] == ["1", "3", "4", "5", "6"]
    assert [r["line"] for r in outputs["parquet"]] == [r["line"] for r in outputs["tsv"]] == ["1", "2", "3", "4", "5"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("text", "line")} for r in rows]  # noqa: E731
    assert strip(outputs["txt"]) == strip(outputs["parquet"]) == strip(outputs["tsv"])


def test_predict_jsonl_output_keeps_unicode_texts(headerless_run, tmp_path):
    from nanoft.commands import predict_file

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(["très bien", "naïve 🙂"])),
                   encoding="utf-8")
    out = tmp_path / "out.jsonl"
    predict_file(str(headerless_run), str(src), str(out), [], False, 4, None)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == ["très bien", "naïve 🙂"] and "très" in out.read_text(encoding="utf-8")


def test_predict_says_which_columns_it_found(headerless_run, tmp_path):
    from nanoft.commands import predict_file

    two = tmp_path / "two.tsv"
    two.write_text("title\tbody\nfine\tgood film\nbad\tpoor plot\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        predict_file(str(headerless_run), str(two), None, [], False, 4, None)
    assert "which column holds the text? columns found: 'title', 'body'" in one_line(e)
    assert "--text-column" in str(e.value)
    rows = read_predictions(predict_file(str(headerless_run), str(two), None, ["body"], False, 4, None))
    assert [r["body"] for r in rows] == ["good film", "poor plot"]
    with pytest.raises(DataError) as e:
        predict_file(str(headerless_run), str(two), None, ["text"], False, 4, None)
    assert "no column 'text'; columns found: 'title', 'body'" in one_line(e)


def test_cli_predict_on_the_reported_case(headerless_run, tmp_path):
    sentences = tmp_path / "sentences.tsv"
    sentences.write_text("text\n" + "\n".join(s.replace("\t", " ") for s in SENTENCES) + "\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-c", "from nanoft.cli import main; main()", "predict",
                             str(headerless_run), "--input", str(sentences)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = read_predictions(result.stdout)
    assert [r["text"] for r in rows] == [s.replace("\t", " ") for s in SENTENCES]
