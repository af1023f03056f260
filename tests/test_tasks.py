"""Task registry and file reading: real data counts, GLUE layouts, user files, splits, bad input."""
import json
from collections import Counter

import numpy as np
import pytest

from nanoft.errors import ConfigError, DataError
from nanoft.tasks import Task, available, from_files, get_task


def counts(examples, task):
    return {task.label_names[i]: n for i, n in Counter(examples.labels.tolist()).items()}


# -- the shared data: row counts and label distributions as in ../shared/data/README.md -------------
@pytest.mark.parametrize("name,split,rows,labels", [
    ("sst2", "train", 67349, {"negative": 29780, "positive": 37569}),
    ("sst2", "dev", 872, {"negative": 428, "positive": 444}),
    ("cola", "train", 8551, {"unacceptable": 2528, "acceptable": 6023}),
    ("cola", "dev", 1043, {"unacceptable": 324, "acceptable": 719}),
    ("rte", "train", 2490, {"entailment": 1249, "not_entailment": 1241}),
    ("rte", "dev", 277, {"entailment": 146, "not_entailment": 131}),
    ("agnews", "train_full", 10001, {"World": 2509, "Sports": 2458, "Business": 2496, "Sci/Tech": 2538}),
    ("agnews", "test", 7600, {"World": 1900, "Sports": 1900, "Business": 1900, "Sci/Tech": 1900}),
    ("imdb", "train_full", 1600, None),
    ("imdb", "test", 400, None),
])
def test_shared_data_rows_and_labels(data_dir, name, split, rows, labels):
    task = get_task(name)
    examples = task.load(data_dir, split)
    assert len(examples) == rows
    if labels is not None:
        assert counts(examples, task) == labels


def test_imdb_split_is_stratified_seeded_and_disjoint(data_dir):
    task = get_task("imdb")
    parts = {s: task.load(data_dir, s) for s in ("train", "dev", "test", "train_full")}
    whole = Counter({"negative": 995, "positive": 1005})  # README
    assert sum((Counter(counts(parts[s], task)) for s in ("train", "dev", "test")), Counter()) == whole
    assert counts(parts["test"], task) == {"negative": 199, "positive": 201}  # 20% of each class
    lines = {s: set(parts[s].lines.tolist()) for s in parts}
    assert not lines["train"] & lines["dev"] and not lines["train"] & lines["test"] and not lines["dev"] & lines["test"]
    assert lines["train"] | lines["dev"] == lines["train_full"]
    again = get_task("imdb").load(data_dir, "test")  # a fresh task object: same rows
    assert again.lines.tolist() == parts["test"].lines.tolist() and again.texts == parts["test"].texts


def test_agnews_dev_carved_from_train(data_dir):
    task = get_task("agnews")
    train, dev = task.load(data_dir, "train"), task.load(data_dir, "dev")
    assert len(train) + len(dev) == 10001 and len(dev) == 1001
    assert not set(train.lines.tolist()) & set(dev.lines.tolist())
    for name, n in counts(dev, task).items():  # 10% of every class
        assert abs(n - 0.1 * {"World": 2509, "Sports": 2458, "Business": 2496, "Sci/Tech": 2538}[name]) < 1


def test_pair_task_keeps_both_texts(data_dir):
    rte = get_task("rte").load(data_dir, "dev")
    assert rte.text_pairs is not None and len(rte.text_pairs) == len(rte.texts) == 277
    with open(data_dir / "rte" / "dev.tsv", encoding="utf-8") as f:
        first = f.readlines()[1].rstrip("\n").split("\t")
    assert (rte.texts[0], rte.text_pairs[0], rte.labels[0]) == (first[0], first[1], int(first[2]))
    assert rte.lines[0] == 2
    assert get_task("sst2").load(data_dir, "dev").text_pairs is None


# -- GLUE release layout -------------------------------------------------------------------------
def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_glue_layout_all_nine(tmp_path):
    t = "\t"
    write(tmp_path / "CoLA" / "dev.tsv", [f"gj04{t}1{t}{t}Our friends won't buy this.", f"gj04{t}0{t}*{t}They drank the pub."])
    write(tmp_path / "CoLA" / "test.tsv", [f"index{t}sentence", f"0{t}Bill whistled past the house."])
    write(tmp_path / "SST-2" / "dev.tsv", [f"sentence{t}label", f"it 's a charming journey . {t}1"])
    write(tmp_path / "MRPC" / "dev.tsv", [f"Quality{t}#1 ID{t}#2 ID{t}#1 String{t}#2 String",
                                          f"1{t}1{t}2{t}He said \"yes\".{t}He agreed."])
    write(tmp_path / "STS-B" / "dev.tsv", [t.join("index genre filename year old_index source1 source2 sentence1 sentence2 score".split()),
                                           t.join(["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man plays.", "A man sings.", "2.250"])])
    write(tmp_path / "QQP" / "dev.tsv", [t.join("id qid1 qid2 question1 question2 is_duplicate".split()),
                                         t.join(["0", "1", "2", "Why?", "How?", "0"])])
    write(tmp_path / "MNLI" / "dev_matched.tsv", [t.join("index promptID pairID genre s1bp s2bp s1p s2p sentence1 sentence2 label1 gold_label".split()),
                                                  t.join(["0", "1", "1e", "gov", "-", "-", "-", "-", "P.", "H.", "neutral", "neutral"])])
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", [t.join("index promptID pairID genre s1bp s2bp s1p s2p sentence1 sentence2 label1 gold_label".split()),
                                                     t.join(["0", "1", "1e", "letters", "-", "-", "-", "-", "P2.", "H2.", "contradiction", "contradiction"])])
    write(tmp_path / "QNLI" / "dev.tsv", [f"index{t}question{t}sentence{t}label", f"0{t}What?{t}This.{t}not_entailment"])
    write(tmp_path / "RTE" / "dev.tsv", [f"index{t}sentence1{t}sentence2{t}label", f"0{t}A.{t}B.{t}entailment"])
    write(tmp_path / "WNLI" / "dev.tsv", [f"index{t}sentence1{t}sentence2{t}label", f"0{t}A.{t}B.{t}1"])

    cola = get_task("CoLA").load(tmp_path, "dev")  # original CoLA: no header, 4 columns
    assert cola.texts == ["Our friends won't buy this.", "They drank the pub."] and cola.labels.tolist() == [1, 0]
    assert cola.lines.tolist() == [1, 2]
    cola_test = get_task("cola").load(tmp_path, "test")  # GLUE test files have no labels
    assert cola_test.labels is None and cola_test.texts == ["Bill whistled past the house."]
    assert get_task("SST-2").load(tmp_path, "dev").texts == ["it 's a charming journey . "]
    mrpc = get_task("mrpc").load(tmp_path, "dev")
    assert (mrpc.texts, mrpc.text_pairs, mrpc.labels.tolist()) == (['He said "yes".'], ["He agreed."], [1])
    stsb = get_task("sts-b").load(tmp_path, "dev")
    assert stsb.labels.dtype == np.float32 and stsb.labels.tolist() == [2.25] and get_task("stsb").is_regression
    assert get_task("qqp").load(tmp_path, "dev").text_pairs == ["How?"]
    mnli = get_task("mnli")
    assert mnli.eval_splits == ("dev_matched", "dev_mismatched")
    assert mnli.load(tmp_path, "dev_matched").labels.tolist() == [1]  # entailment, neutral, contradiction
    assert mnli.load(tmp_path, "dev_mismatched").labels.tolist() == [2]
    assert get_task("qnli").load(tmp_path, "dev").labels.tolist() == [1]
    assert get_task("rte").load(tmp_path, "dev").labels.tolist() == [0]
    assert get_task("wnli").load(tmp_path, "dev").labels.tolist() == [1]  # 1 = entailment


def test_registry_names_and_metrics():
    assert available() == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "agnews", "imdb"]
    assert get_task("cola").main_metric == "matthews_corrcoef"
    assert get_task("stsb").label_names is None and get_task("stsb").num_labels == 1
    assert get_task("agnews").label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(get_task("mnli").label_names) == 3


def test_unknown_task_lists_known_and_suggests():
    with pytest.raises(ConfigError) as e:
        get_task("sst3")
    message = str(e.value)
    assert "unknown task 'sst3'" in message and "cola, sst2, mrpc" in message and "did you mean 'sst2'" in message
    assert "\n" not in message


# -- any file ------------------------------------------------------------------------------------
def test_from_files_tsv_label_names_and_saved_label_map(tmp_path):
    train = write(tmp_path / "train.tsv", ["text\tlabel", "good film\tpos", "bad film\tneg", "fine\tpos", "meh\tneg"])
    dev = write(tmp_path / "dev.tsv", ["text\tlabel", "great\tpos", "awful\tneg"])
    task = from_files(train, dev, text_columns="text", label_column="label")
    assert task.label_names == ["neg", "pos"] and not task.is_regression and task.metrics == ("accuracy", "f1")
    assert task.load(None, "train").labels.tolist() == [1, 0, 1, 0]
    restored = Task.from_dict(json.loads(json.dumps(task.to_dict())))  # as saved with the run
    assert restored.label_names == ["neg", "pos"]
    assert restored.load(None, "dev").labels.tolist() == [1, 0]


def test_from_files_csv_pair_and_int_labels(tmp_path):
    train = write(tmp_path / "train.csv", ["premise,hypothesis,y", '"A man, tall",He is tall,2', "B,C,0", "D,E,2", "F,G,0"])
    task = from_files(train, text_columns=["premise", "hypothesis"], label_column="y", split="0.5,0.5")
    assert task.label_names == ["0", "2"]  # integer labels sorted by value
    everything = task.load(None, "train").texts + task.load(None, "dev").texts
    assert sorted(everything) == ["A man, tall", "B", "D", "F"]


def test_from_files_jsonl_and_no_header(tmp_path):
    rows = [{"sentence": f"s{i}", "score": i / 2} for i in range(10)]
    train = write(tmp_path / "train.jsonl", [json.dumps(r) for r in rows])
    task = from_files(train, text_columns="sentence", label_column="score", split="0.8,0.2")
    assert task.is_regression and task.metrics == ("pearson", "spearman")
    assert len(task.load(None, "train")) == 8 and len(task.load(None, "dev")) == 2

    headless = write(tmp_path / "plain.tsv", ["1\tfirst", "0\tsecond", "1\tthird", "0\tfourth"])
    dev = write(tmp_path / "plain_dev.tsv", ["0\tfifth"])
    task = from_files(headless, dev, text_columns=[1], label_column=0, has_header=False)
    assert task.load(None, "train").texts == ["first", "second", "third", "fourth"]
    assert task.load(None, "dev").labels.tolist() == [0]
    with pytest.raises(ConfigError, match="positions"):
        from_files(headless, text_columns="text", label_column=0, has_header=False)


def test_user_split_is_stratified_seeded_and_saved(tmp_path):
    lines = ["text\tlabel"] + [f"a{i}\t{'x' if i % 4 else 'y'}" for i in range(200)]  # 150 x, 50 y
    train = write(tmp_path / "train.tsv", lines)
    task = from_files(train, text_columns="text", label_column="label", split="0.8,0.1,0.1", seed=3)
    parts = {s: task.load(None, s) for s in ("train", "dev", "test")}
    assert [len(parts[s]) for s in ("train", "dev", "test")] == [160, 20, 20]
    assert counts(parts["dev"], task) == {"x": 15, "y": 5} == counts(parts["test"], task)
    same = from_files(train, text_columns="text", label_column="label", split="0.8,0.1,0.1", seed=3)
    assert same.load(None, "dev").texts == parts["dev"].texts  # seeded
    other = from_files(train, text_columns="text", label_column="label", split="0.8,0.1,0.1", seed=4)
    assert other.load(None, "dev").texts != parts["dev"].texts
    saved = task.to_dict()
    assert sum(len(p) for p in next(iter(saved["carved"].values()))) == 200  # the row indices are saved
    restored = Task.from_dict(json.loads(json.dumps(saved)))
    assert restored.load(None, "test").texts == parts["test"].texts
    with pytest.raises(ConfigError, match="sum to"):
        from_files(train, text_columns="text", label_column="label", split="0.8,0.3")


# -- bad input: one line, file and line number -------------------------------------------------
def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        from_files(tmp_path / "nope.tsv", text_columns="text")
    assert f"{tmp_path / 'nope.tsv'}: file not found" in one_line(e)
    with pytest.raises(DataError) as e:
        get_task("sst2").load(tmp_path, "dev")
    assert "no file for split 'dev'" in one_line(e) and "SST-2/dev.tsv" in one_line(e)


def test_empty_file(tmp_path):
    path = write(tmp_path / "train.tsv", [""])
    with pytest.raises(DataError) as e:
        from_files(path, text_columns="text")
    assert f"{path}: file is empty" in one_line(e)


def test_missing_column_lists_columns_found(tmp_path):
    path = write(tmp_path / "train.tsv", ["sentence\tlabel", "a\t1"])
    with pytest.raises(DataError) as e:
        from_files(path, text_columns="text", label_column="label")
    assert f"{path}:1: no column 'text'; columns found: 'sentence', 'label'" in one_line(e)


def test_label_not_in_label_set(tmp_path):
    write(tmp_path / "sst2" / "dev.tsv", ["sentence\tlabel", "fine\t1", "odd\t7"])
    with pytest.raises(DataError) as e:
        get_task("sst2").load(tmp_path, "dev")
    assert f"{tmp_path / 'sst2' / 'dev.tsv'}:3: label '7' not in the label set" in one_line(e)
    train = write(tmp_path / "train.tsv", ["text\tlabel", "a\tpos", "b\tneg"])
    dev = write(tmp_path / "dev.tsv", ["text\tlabel", "c\tpos", "d\tneutral"])
    task = from_files(train, dev, text_columns="text")
    with pytest.raises(DataError) as e:
        task.load(None, "dev")
    assert f"{dev}:3: label 'neutral' not in the label set" in one_line(e)


def test_ragged_row(tmp_path):
    path = write(tmp_path / "train.tsv", ["text\tlabel", "a\t1", "b\tc\t0", "d\t1"])
    with pytest.raises(DataError) as e:
        from_files(path, text_columns="text")
    assert f"{path}:3: ragged row: 3 tab-separated fields" in one_line(e)


def test_bad_utf8(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"text\tlabel\nok\t1\nbad \xff byte\t0\n")
    with pytest.raises(DataError) as e:
        from_files(path, text_columns="text")
    assert f"{path}:3: not valid UTF-8 (byte 0xff at column 5)" in one_line(e)


def test_jsonl_line_not_json(tmp_path):
    path = write(tmp_path / "train.jsonl", ['{"text": "a", "label": 1}', '{"text": "b", "label": 0', ""])
    with pytest.raises(DataError) as e:
        from_files(path, text_columns="text")
    assert f"{path}:2: not valid JSON" in one_line(e)


def test_csv_quoted_newlines_keep_line_numbers(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('review,sentiment\n"two\nlines, one review",positive\nshort,negative\n"x",positive,extra\n',
                    encoding="utf-8")
    with pytest.raises(DataError) as e:
        from_files(path, text_columns="review", label_column="sentiment")
    assert f"{path}:5: ragged row: 3 comma-separated fields" in one_line(e)  # the row after a 2-line review
    path.write_text('review,sentiment\n"two\nlines, one review",positive\nshort,negative\n', encoding="utf-8")
    task = from_files(path, path, text_columns="review", label_column="sentiment")
    dev = task.load(None, "dev")
    assert dev.texts == ["two\nlines, one review", "short"] and dev.lines.tolist() == [2, 4]


def test_many_small_classes_still_get_a_dev_set_of_their_share(tmp_path):
    """12 classes of 4 rows, 10% dev: rounding class by class gives 0 dev rows; the split falls back to the
    quantile cut, which gives the overall share (5 of 48), no row twice, seeded."""
    import numpy as np

    from nanoft.tasks.splits import stratified_split

    labels = np.repeat(np.arange(12), 4)
    train, dev = stratified_split(labels, 48, (0.9, 0.1), seed=0)
    assert (len(train), len(dev)) == (43, 5)
    assert sorted(np.concatenate([train, dev]).tolist()) == list(range(48))
    assert len(set(labels[dev].tolist())) == 5  # at most one row of a class goes to dev: proportional
    again = stratified_split(labels, 48, (0.9, 0.1), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, dev), again))
    lines = ["text\tlabel"] + [f"row {i}\tc{i % 12}" for i in range(48)]
    task = from_files(write(tmp_path / "many.tsv", lines), text_columns="text", label_column="label")
    assert len(task.load(None, "dev")) == 5


def test_a_saved_split_of_a_changed_file_is_refused(tmp_path):
    """A run's task.json keeps its carved split by the file's SHA-256; after the file changes, re-carving would
    put rows the model trained on into dev, so loading is refused in one line."""
    lines = ["text\tlabel"] + [f"row {i}\t{i % 2}" for i in range(40)]
    path = write(tmp_path / "data.tsv", lines)
    task = from_files(path, text_columns="text", label_column="label")
    task.load(None, "dev")
    saved = json.loads(json.dumps(task.to_dict()))
    write(path, lines + [f"new {i}\t{i % 2}" for i in range(10)])
    with pytest.raises(DataError) as e:
        Task.from_dict(saved).load(None, "dev")
    assert "the file changed" in one_line(e) and str(path) in one_line(e)


def test_dev_and_test_files_are_read_in_their_own_format(tmp_path):
    """--train-file x.tsv --dev-file y.csv: each file is parsed by its own extension."""
    train = write(tmp_path / "train.tsv", ["text\tlabel"] + [f"row {i}\t{i % 2}" for i in range(8)])
    dev = write(tmp_path / "dev.csv", ["text,label", '"a, quoted row",1', "plain,0"])
    task = from_files(train, dev, text_columns="text", label_column="label")
    assert task.load(None, "dev").texts == ["a, quoted row", "plain"]


def test_a_single_label_is_refused(tmp_path):
    train = write(tmp_path / "train.tsv", ["text\tlabel"] + [f"row {i}\t1" for i in range(8)])
    with pytest.raises(DataError) as e:
        from_files(train, text_columns="text", label_column="label")
    assert "at least 2 classes" in one_line(e)


def test_label_type_forces_how_labels_are_read(tmp_path):
    """0.0/1.0 labels read as regression unless --label-type classification; integer scores as classes unless
    --label-type regression; a built-in task refuses the option."""
    from nanoft.errors import ConfigError
    from nanoft.train import build
    from nanoft.train.config import TrainConfig

    floats = tmp_path / "floats.tsv"
    floats.write_text("text\tlabel\n" + "".join(f"row {i}\t{i % 2}.0\n" for i in range(20)))
    scores = tmp_path / "scores.tsv"
    scores.write_text("text\tlabel\n" + "".join(f"row {i}\t{1 + i % 5}\n" for i in range(20)))

    def task(path, label_type):
        return build.load_task(TrainConfig(train_file=str(path), label_type=label_type).validate())

    assert task(floats, "auto").is_regression
    forced = task(floats, "classification")
    assert not forced.is_regression and forced.label_names == ["0.0", "1.0"]
    assert task(scores, "auto").label_names == ["1", "2", "3", "4", "5"]
    assert task(scores, "regression").is_regression
    with pytest.raises(ConfigError, match="--label-type applies to --train-file"):
        TrainConfig(task="sst2", label_type="regression").validate()
