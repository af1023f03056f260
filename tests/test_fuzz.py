"""Fuzzed inputs: malformed data files and checkpoints end in success or a one-line NanoftError.

Property-based (hypothesis, derandomized so every run tries the same cases). Data files are built
from what users get wrong (ragged rows, stray quotes and tabs, NUL bytes, BOMs, CRLF, bad UTF-8,
mixed label types, very long lines, empty and header-only files) and read the way
`nanoft train --train-file` reads them; checkpoints are a tiny BERT with truncated, bit-flipped or
rewritten files and configs, loaded with `nanoft.load_model`. Any exception other than a
`NanoftError` is a crash the CLI would show as a traceback. A few generated failures also go
through the real `nanoft` executable: exit 2, one line on stderr, no traceback.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanoft
from nanoft.data import encode
from nanoft.errors import NanoftError
from nanoft.tasks import from_files
from nanoft.weights.safetensors_io import DTYPES, SafetensorsFile, save_file

# Examples per property. Sized so the whole file takes well under a minute on 2 CPU cores;
# bench/results/reliability.md records these counts.
N_DATA = 300
N_CHECKPOINT = 300
N_CLI = 2  # generated failures per kind (data file, checkpoint), each run by its own `nanoft train` process

FUZZ = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
NANOFT = Path(sys.executable).parent / "nanoft"


def assert_one_line(error: NanoftError) -> None:
    """The CLI prints str(error) as its only line: the message must not break lines itself."""
    assert len(f"error: {error}".splitlines()) == 1, repr(str(error))


# ------------------------------------------------------------------------------------- data files
FORMATS = {"tsv": ".tsv", "csv": ".csv", "jsonl": ".jsonl"}
PIECES = ["good", "bad", "movie", " ", "", '"', '""', "'", ",", "\t", "\x00", "\r", "\\", "{", "}", "[", "]", ":",
          "null", "é", "😀", "\ufeff", "\u2028", "\x85", "\x1c", "\x0b"]
LABELS = ["0", "1", "2", "-1", "01", "+1", " 1 ", "1.5", "-0.25", "nan", "NaN", "inf", "-inf", "1e999", "1e39", "",
          " ", "pos", "neg", "True", "null", "٣", "1_0", "0x1", "１", "²"]
BOM = b"\xef\xbb\xbf"
SPECIAL = [b"", BOM, b"\n\r\n", b"   \n", b"text\tlabel\n", b"text,label\r\n", b'{"text": "a", "label": 1}',
           BOM + b"text\tlabel\n", b"\x00" * 16, b"\xff\xfe", b"\n" * 5 + b"text\tlabel\n" + b"\n" * 5]

LONG = "good " * 30_000  # a 150,000-character field
fields = st.one_of(st.lists(st.sampled_from(PIECES), max_size=6).map("".join), st.text(max_size=12))
labels = st.one_of(st.sampled_from(LABELS), st.integers(-3, 3).map(str), st.floats().map(repr), fields)
headers = st.one_of(st.just(["text", "label"]), st.just(["label", "text"]), st.lists(fields, max_size=3))


@st.composite
def rows(draw) -> list:
    if draw(st.integers(0, 7)) == 0:  # ragged: any number of fields
        return draw(st.lists(st.one_of(fields, labels), max_size=4))
    return [LONG if draw(st.integers(0, 19)) == 0 else draw(fields), draw(labels)]


@st.composite
def json_line(draw, header: list, row: list) -> str:
    """One JSONL line: usually an object of the header's keys, sometimes not an object or not JSON."""
    kind = draw(st.sampled_from(["object"] * 40 + ["typed"] * 4 +
                                ["junk", "array", "scalar", "deep", "missing", "surrogate"]))
    if kind == "junk":
        return draw(fields)
    if kind == "array":
        return json.dumps(row)
    if kind == "scalar":
        return json.dumps(draw(st.one_of(st.integers(), st.text(max_size=5), st.none())))
    if kind == "deep":
        depth = draw(st.sampled_from([10, 100_000]))
        return '{"text": ' + "[" * depth + "]" * depth + ', "label": 1}'
    record = dict(zip(header, row))
    if kind == "surrogate" and header:  # an escape of half a surrogate pair: valid JSON, not valid text
        record[header[0]] = draw(st.sampled_from(["\ud800", "a\udfff", "\ud83d"]))
    if kind == "typed" and header:  # labels of other JSON types: numbers, booleans, null, lists
        record[header[-1]] = draw(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(),
                                            st.lists(st.integers(), max_size=2)))
    if kind == "missing" and record:
        record.pop(next(iter(record)))
    return json.dumps(record, ensure_ascii=draw(st.booleans()))


@st.composite
def clean_rows(draw) -> tuple:
    """A well-formed header and 0..40 rows whose labels come from a pool of 1..3 values (names, ints,
    floats, nan...), so files get past the parser into label inference, carving and encoding."""
    pool = draw(st.lists(labels, min_size=1, max_size=3, unique=True))
    size = draw(st.integers(0, 40))
    body = draw(st.lists(st.tuples(fields, st.sampled_from(pool)), min_size=size, max_size=size))
    one_line = {ord("\t"): " ", ord("\n"): " ", ord("\r"): " "}  # a TSV field holds no tab or newline
    return ["text", "label"], [[text.translate(one_line), label.translate(one_line)] for text, label in body]


@st.composite
def data_files(draw) -> tuple:
    """(format, bytes) of a labelled file: special cases, well-formed or messy, then possibly damaged."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    if draw(st.integers(0, 9)) == 0:
        return fmt, draw(st.sampled_from(SPECIAL))
    if draw(st.booleans()):
        header, body = draw(clean_rows())
    else:
        header, body = draw(headers), draw(st.lists(rows(), max_size=10))
    if fmt == "tsv":
        lines = ["\t".join(r) for r in [header, *body]]
    elif fmt == "csv":
        quote = draw(st.booleans())  # RFC 4180 quoting, or a naive join that breaks on commas and quotes
        lines = [",".join('"' + f.replace('"', '""') + '"' if quote else f for f in r) for r in [header, *body]]
    else:
        lines = [draw(json_line(header, r)) for r in body]
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = (newline.join(lines) + draw(st.sampled_from(["", newline]))).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        data = BOM + data
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "insert", "replace"]))
    if damage != "none" and data:
        at = draw(st.integers(0, len(data) - 1))
        if damage == "truncate":
            data = data[:at]
        elif damage == "insert":
            stray = draw(st.sampled_from([b"\xff", b"\x00", b"\xc3", b"\xed\xa0\x80", b"\t", b'"']))
            data = data[:at] + stray + data[at:]
        else:
            data = draw(st.binary(max_size=64))
    return fmt, data


def write_file(directory: Path, name: str, case: tuple, suffix: Optional[str] = None) -> Path:
    fmt, data = case
    path = directory / f"{name}{suffix or FORMATS[fmt]}"
    path.write_bytes(data)
    return path


def read_like_train(train: Path, dev: Optional[Path], has_header: bool, split: Optional[str], tokenizer) -> None:
    """What `nanoft train --train-file` does (nanoft.train.build): build the task, load and encode each split."""
    columns, label = (["text"], "label") if has_header else (["0"], "1")
    task = from_files(train, dev, None, text_columns=columns, label_column=label, has_header=has_header,
                      split=split, seed=0)
    for split_name in ("train", *task.eval_splits):
        if split_name in task.splits:
            examples = task.load(None, split_name)
            assert len(examples) > 0, f"{split_name} loaded without rows: training or evaluation would fail later"
            encode(examples, tokenizer, 32, use_cache=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_task):
    return nanoft.load_tokenizer(tiny_task["model"])


@settings(max_examples=N_DATA, **FUZZ)
@given(train=data_files(), dev=st.one_of(st.none(), data_files()), has_header=st.booleans(),
       split=st.sampled_from([None] * 4 + ["0.8,0.1,0.1", "0.5,0.5"]),
       suffix=st.sampled_from([None] * 18 + [".txt", ".dat"]))
def test_data_files_load_or_fail_cleanly(tokenizer, train, dev, has_header, split, suffix):
    if dev is not None:
        split = None  # --split with --dev-file is a ConfigError before any file is read
    with tempfile.TemporaryDirectory() as tmp:
        train_path = write_file(Path(tmp), "train", train, suffix)
        dev_path = None if dev is None else write_file(Path(tmp), "dev", dev)
        try:
            read_like_train(train_path, dev_path, has_header, split, tokenizer)
        except NanoftError as e:
            assert_one_line(e)


# ------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def base_checkpoint(tiny_task) -> dict:
    """The tiny BERT of conftest (config, file bytes, tensors, vocabulary), for damaged copies."""
    directory = tiny_task["model_nodrop"]
    st_file = SafetensorsFile(directory / "model.safetensors")
    return {"config": json.loads((directory / "config.json").read_text(encoding="utf-8")),
            "weights": (directory / "model.safetensors").read_bytes(),
            "tensors": {k: st_file.tensor(k).clone() for k in st_file.keys()},
            "vocab": (directory / "vocab.txt").read_bytes()}


CONFIG_KEYS = ["model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
               "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "pad_token_id",
               "num_labels", "id2label", "architectures", "nanoft"]
# Sizes stay below what would allocate gigabytes: a config claiming 2**40 labels is a different bug class.
json_values = st.one_of(st.integers(-2, 70), st.floats(), st.booleans(), st.none(), st.text(max_size=6),
                        st.sampled_from(["bert", "roberta", "distilbert", "gelu", "relu", "full", "performer"]),
                        st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                                 st.integers(0, 3), max_size=2))


def header_of(weights: bytes) -> tuple:
    (n,) = struct.unpack("<Q", weights[:8])
    return json.loads(weights[8:8 + n]), n


def with_header(weights: bytes, header: dict) -> bytes:
    _, n = header_of(weights)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + weights[8 + n:]


@st.composite
def damaged_checkpoints(draw, base: dict) -> tuple:
    """(config.json bytes, model.safetensors bytes) with one kind of damage."""
    config, weights, tensors = dict(base["config"]), base["weights"], dict(base["tensors"])
    header, header_len = header_of(weights)
    names = sorted(tensors)
    kind = draw(st.sampled_from(["truncate", "flip", "length", "entry", "dtype", "shape", "config", "config_bytes"]))
    if kind == "truncate":
        weights = weights[:draw(st.integers(0, len(weights) - 1))]
    elif kind == "flip":  # flip bits in the length prefix or the JSON header
        data = bytearray(weights)
        for at in draw(st.lists(st.integers(0, 8 + header_len - 1), min_size=1, max_size=4)):
            data[at] ^= 1 << draw(st.integers(0, 7))
        weights = bytes(data)
    elif kind == "length":  # the length prefix lies
        lie = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(-16, 16).map(lambda d: max(0, header_len + d))))
        weights = struct.pack("<Q", lie) + weights[8:]
    elif kind == "entry":  # one header field of one tensor replaced by another JSON value
        name = draw(st.sampled_from(names))
        entry = dict(header[name])
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
        value = draw(st.one_of(json_values, st.lists(st.integers(-2**65, 2**65), max_size=3),
                               st.sampled_from(list(DTYPES) + ["F8_E4M3", "I4", "U64"])))
        header[name] = value if field is None else {**entry, field: value}
        weights = with_header(weights, header)
    elif kind == "dtype":  # a consistent file whose tensors have the wrong dtype
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):
            tensors[name] = tensors[name].to(DTYPES[draw(st.sampled_from(sorted(DTYPES)))])
        weights = None
    elif kind == "shape":  # a consistent file whose tensors do not match config.json
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):
            tensors[name] = torch.zeros(draw(st.lists(st.integers(0, 70), max_size=3)))
        weights = None
    elif kind == "config":
        for key in draw(st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=3)):
            config[key] = draw(json_values)
            if key == "nanoft" and draw(st.booleans()):  # nanoft's own block: attention kind and options
                config[key] = {"attention": draw(json_values), "attention_options": draw(json_values)}
    if weights is None:
        with tempfile.TemporaryDirectory() as tmp:
            save_file(tensors, Path(tmp) / "w.safetensors")
            weights = (Path(tmp) / "w.safetensors").read_bytes()
    config_bytes = json.dumps(config).encode()
    if kind == "config_bytes":
        config_bytes = draw(st.one_of(st.binary(max_size=40), st.just(config_bytes[:draw(st.integers(0, 40))]),
                                      json_values.map(lambda v: json.dumps(v).encode()),
                                      st.just(b"[" * 100_000 + b"]" * 100_000)))
    return config_bytes, weights


def write_checkpoint(directory: Path, case: tuple, vocab: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_bytes(case[0])
    (directory / "model.safetensors").write_bytes(case[1])
    (directory / "vocab.txt").write_bytes(vocab)
    return directory


LOAD_OPTIONS = [{}, {"head": None}, {"num_labels": 2, "max_length": 100}]


@settings(max_examples=N_CHECKPOINT, **FUZZ)
@given(data=st.data(), options=st.sampled_from(LOAD_OPTIONS))
def test_checkpoints_load_or_fail_cleanly(base_checkpoint, data, options):
    case = data.draw(damaged_checkpoints(base_checkpoint))
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_checkpoint(Path(tmp) / "model", case, base_checkpoint["vocab"])
        try:
            nanoft.load_tokenizer(directory)  # `nanoft train --model` reads the tokenizer (and config.json) first
            model = nanoft.load_model(directory, **options)
        except NanoftError as e:
            assert_one_line(e)
            return
        with torch.no_grad():  # what loaded must also run: no error deferred to the first forward
            model(torch.tensor([[2, 5, 6, 3]]))


# ------------------------------------------------------------------------------------- the real CLI
def first_failures(strategy, fails, count: int) -> list:
    """The first `count` generated cases for which `fails(case)` (the library raised a NanoftError)."""
    found: list = []

    @settings(max_examples=20 * count, **FUZZ)
    @given(case=strategy)
    def collect(case):
        if len(found) < count and fails(case):
            found.append(case)

    collect()
    assert len(found) == count
    return found


def raises_nanoft_error(action) -> bool:
    try:
        action()
    except NanoftError:
        return True
    return False


def test_cli_failures_are_one_line(tiny_task, tokenizer, base_checkpoint, tmp_path):
    """Generated bad files and checkpoints through the `nanoft` executable (processes run side by side)."""
    def data_fails(case: tuple) -> bool:
        probe = write_file(tmp_path, "probe", case)
        return raises_nanoft_error(lambda: read_like_train(probe, None, True, None, tokenizer))

    def checkpoint_fails(case: tuple) -> bool:
        probe = write_checkpoint(tmp_path / "probe", case, b"")
        return raises_nanoft_error(lambda: nanoft.load_model(probe, num_labels=2, max_length=32))

    good = ["--train-file", str(tiny_task["data"] / "train.tsv"), "--dev-file", str(tiny_task["data"] / "dev.tsv")]
    bad_files = first_failures(data_files(), data_fails, N_CLI)
    bad_models = first_failures(damaged_checkpoints(base_checkpoint), checkpoint_fails, N_CLI)
    commands = [["--train-file", str(write_file(tmp_path, f"train{k}", case)), "--model", str(tiny_task["model"])]
                for k, case in enumerate(bad_files)]
    commands += [[*good, "--model", str(write_checkpoint(tmp_path / f"model{k}", case, base_checkpoint["vocab"])),
                  "--max-length", "32"] for k, case in enumerate(bad_models)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    runs = [subprocess.Popen([str(NANOFT), "train", *args, "--output", str(tmp_path / f"run{k}"), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
            for k, args in enumerate(commands)]
    for k, run in enumerate(runs):
        out, err = run.communicate(timeout=300)
        assert run.returncode == 2, (commands[k], err)
        assert "Traceback" not in out + err
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert not (tmp_path / f"run{k}").exists()  # nothing half-written


# ------------------------------------------------------------------- the crashes fuzzing found, pinned
# Each of these raised something other than a NanoftError (or passed bad data on) before its fix.
@pytest.mark.parametrize("line,message", [
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": 1}', "JSON nested too deeply"),  # RecursionError
    ('{"text": "a\\ud800", "label": 1}', "a \\ud800 escape is half a surrogate pair"),  # crashed when encoded
])
def test_jsonl_lines_that_crashed(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine", "label": 0}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(NanoftError) as e:
        from_files(path, text_columns="text")
    assert f"{path}:2: {message}" in str(e.value)


@pytest.mark.parametrize("label", ["nan", "inf", "-inf", "1e39"])  # 1e39 overflows float32 to inf
def test_regression_labels_must_be_finite(tmp_path, label):
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(f"row {i}\t{i / 10}\n" for i in range(20)) + f"bad\t{label}\n",
                    encoding="utf-8")
    with pytest.raises(NanoftError) as e:
        from_files(path, text_columns="text")  # loads train to carve dev: the nan target stops here
    assert f"{path}:22: label '{label}' is not a finite float32 number" in str(e.value)


def test_too_few_rows_to_carve_dev_is_an_error(tmp_path):
    """Was: an empty dev split, and a crash (torch.cat of nothing) at the trainer's first evaluation."""
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\ngood movie\t1\nbad movie\t0\n", encoding="utf-8")
    with pytest.raises(NanoftError) as e:
        from_files(path, text_columns="text")
    assert "2 rows are too few to carve splits of 0.9,0.1 (rows per part: 2/0)" in str(e.value)


def test_labels_with_line_breaks_stay_on_one_line(tmp_path):
    """A label holding \\r or \\x1c (both line breaks to str.splitlines) was printed raw: a two-line error."""
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("text\tlabel\ngood\tpos\nbad\tneg\n", encoding="utf-8")
    dev.write_text("text\tlabel\nfine\tpo\r\x1cs\n", encoding="utf-8")
    with pytest.raises(NanoftError) as e:
        from_files(train, dev, text_columns="text").load(None, "dev")
    assert_one_line(e.value)
    assert f"{dev}:2: label 'po\\r\\x1cs' not in the label set of 'custom' ('neg', 'pos')" in str(e.value)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def replace_tensor(directory: Path, name: str, tensor: torch.Tensor) -> None:
    """Rewrite model.safetensors (a consistent file) with `name` set to `tensor`."""
    st_file = SafetensorsFile(directory / "model.safetensors")
    tensors = {k: st_file.tensor(k).clone() for k in st_file.keys()}
    del st_file  # its memory map, before the file is replaced
    save_file({**tensors, name: tensor}, directory / "model.safetensors")


def rewrite_header(path: Path, name: str, **entry) -> None:
    weights = path.read_bytes()
    header, _ = header_of(weights)
    header[name] = {**header[name], **entry}
    path.write_bytes(with_header(weights, header))


@pytest.mark.parametrize("entry,message", [
    ({"dtype": ["F32"]}, "unsupported dtype ['F32']"),  # was TypeError: unhashable type
    ({"shape": 4}, "has shape 4 and offsets"),  # was TypeError: not iterable
    ({"shape": [2.5, 2]}, "not all sizes"),  # passed the size check, then failed in reshape
    ({"shape": [-25, -32]}, "not all sizes"),  # numel 800 matched the bytes
    ({"data_offsets": ["0", "3200"]}, "not all sizes"),  # was TypeError: str - str
])
def test_safetensors_header_entries_that_crashed(tiny_task, tmp_path, entry, message):
    directory = copy_model(tiny_task["model_nodrop"], tmp_path / "model")
    rewrite_header(directory / "model.safetensors", "bert.embeddings.word_embeddings.weight", **entry)
    with pytest.raises(NanoftError) as e:
        nanoft.load_model(directory)
    assert message in str(e.value) and "model.safetensors" in str(e.value)


def test_safetensors_header_nested_too_deeply(tiny_task, tmp_path):
    directory = copy_model(tiny_task["model_nodrop"], tmp_path / "model")
    raw = b"[" * 100_000 + b"]" * 100_000
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(NanoftError, match="header is not valid JSON"):
        nanoft.load_model(directory)


@pytest.mark.parametrize("key,value,message", [
    ("hidden_size", "32", "hidden_size must be an integer >= 1, got '32'"),  # was TypeError in %
    ("num_attention_heads", 0, "num_heads must be an integer >= 1, got 0"),  # was ZeroDivisionError
    ("hidden_dropout_prob", 5, "hidden_dropout must be a probability in [0, 1), got 5"),  # ValueError in torch
    ("layer_norm_eps", "small", "layer_norm_eps must be a small positive number"),  # TypeError at first forward
    ("pad_token_id", 25, "pad_token_id 25 is outside the vocabulary of 25"),  # AssertionError in nn.Embedding
    ("num_labels", "two", "num_labels must be an integer >= 1, got 'two'"),  # TypeError in nn.Linear
    ("id2label", 7, "id2label must be an object"),  # TypeError: len() of int
    ("nanoft", {"attention_options": [1]}, "nanoft.attention_options an object, got 'full' and [1]"),  # dict([1])
])
def test_config_values_that_crashed(tiny_task, tmp_path, key, value, message):
    directory = copy_model(tiny_task["model_nodrop"], tmp_path / "model")
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    config[key] = value
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(NanoftError) as e:
        nanoft.load_model(directory)
    assert str(e.value).startswith(f"{directory / 'config.json'}: ") and message in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2]", "5", "[" * 100_000 + "]" * 100_000])
def test_tokenizer_reads_config_json_objects_only(tiny_task, tmp_path, text):
    """Was: AttributeError ('list' object has no attribute 'get') or RecursionError in load_tokenizer."""
    directory = copy_model(tiny_task["model_nodrop"], tmp_path / "model")
    (directory / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(NanoftError) as e:
        nanoft.load_tokenizer(directory)
    assert str(e.value).startswith(f"{directory / 'config.json'}: ")


def test_integer_tensor_for_a_float_weight(tiny_task, tmp_path):
    """Was: RuntimeError from load_state_dict ('Only Tensors of floating point ... can require gradients')."""
    directory = copy_model(tiny_task["model_nodrop"], tmp_path / "model")
    replace_tensor(directory, "bert.encoder.layer.0.attention.self.query.weight",
                   torch.ones(32, 32, dtype=torch.int32))
    with pytest.raises(NanoftError, match="query.weight has dtype int32, model expects float32"):
        nanoft.load_model(directory)


@pytest.mark.parametrize("shape", [(40,), (40, 2, 32), (0, 32), (40, 32)])
def test_position_table_not_what_config_says(tiny_task, tmp_path, shape):
    """A table shorter than config.json says was 'extended': IndexError/RuntimeError for other ranks, an endless
    loop for 0 rows, and silent tiling for 40 rows; only a table as config.json describes is extended."""
    directory = copy_model(tiny_task["model_nodrop"], tmp_path / "model")
    replace_tensor(directory, "bert.embeddings.position_embeddings.weight", torch.zeros(shape))
    with pytest.raises(NanoftError) as e:
        nanoft.load_model(directory, max_length=100)
    assert f"position_embeddings.weight has shape {shape}, model expects (100, 32)" in str(e.value)

