"""Reading TSV, CSV, JSONL, Parquet and Arrow files into rows, with one-line errors that name file and line.

Every user data file passes through `read_table`. It reads bytes once (so the content hash that
keys the encoding cache costs nothing extra), decodes UTF-8 strictly, and keeps the physical line
number of every row so later errors (a bad label, say) can point at the exact line.

Formats:
- TSV: split on tab, no quoting (GLUE files contain literal quotes), every row as wide as the first.
- CSV: RFC 4180 quoting, quoted fields may span lines (IMDB reviews do); the row's first line is kept.
- JSONL: one JSON object per line; columns are the keys of the first object.
- Parquet (.parquet, .pq) and Arrow (.arrow, .feather, .ipc: Arrow IPC file or stream, Feather v1/v2),
  the formats of the Hugging Face `datasets` ecosystem, through the optional pyarrow (`nanoft[parquet]`).
  Columns are always named; values become the strings a TSV would hold (ints as digits, bools as 1/0,
  nulls as empty, lists and dicts as JSON), so a file gives the same examples as the same data in TSV.
  These formats have no lines: `lines[i]` is the 1-based row number, so "file.parquet:7:" is row 7.
- Text (`read_lines`, for `nanoft predict --input file.txt`): one text per line, column `text`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from nanoft.errors import DataError

Column = Union[str, int]
FORMATS = ("tsv", "csv", "jsonl", "parquet", "arrow")
COLUMNAR = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}


@dataclass
class Table:
    """Rows of strings read from one file. `lines[i]` is the 1-based line where row i starts."""

    path: str
    format: str
    header: Optional[List[str]]  # column names, or None for a file without a header
    rows: List[List[str]]
    lines: List[int]
    sha256: str  # hash of the file's bytes
    header_line: Optional[int] = None  # line of the header, when there is one

    @property
    def width(self) -> int:
        if self.header is not None:
            return len(self.header)
        return len(self.rows[0]) if self.rows else 0

    def column_index(self, column: Column) -> int:
        """Position of a column given by name (needs a header) or by integer position."""
        if isinstance(column, int) or (isinstance(column, str) and column.isdigit() and
                                       (self.header is None or column not in self.header)):
            index = int(column)
            if not 0 <= index < self.width:
                raise DataError(f"no column {index}: rows have {self.width} columns (0..{self.width - 1})",
                                path=self.path, fix="pick a column index in that range")
            return index
        if self.header is None:
            raise DataError(f"column {column!r} asked by name but the file is read without a header",
                            path=self.path, fix="use integer column positions with --no-header")
        if column not in self.header:
            found = ", ".join(repr(c) for c in self.header)
            raise DataError(f"no column {column!r}; columns found: {found}", path=self.path,
                            line=self.header_line, fix="pass one of these with --text-column/--label-column")
        return self.header.index(column)

    def without_header(self) -> "Table":
        """The same file read as having no header: its first line becomes the first row."""
        if self.header is None:
            return self
        return Table(self.path, self.format, None, [self.header] + self.rows,
                     [self.header_line or 1] + self.lines, self.sha256)

    def column(self, column: Column) -> List[str]:
        index = self.column_index(column)
        return [row[index] for row in self.rows]


def detect_format(path: Union[str, Path]) -> str:
    """File format from its extension: .tsv/.txt -> tsv, .csv -> csv, .jsonl/.json/.ndjson -> jsonl,
    .parquet/.pq -> parquet, .arrow/.feather/.ipc -> arrow."""
    suffix = Path(path).suffix.lower()
    if suffix in COLUMNAR:
        return COLUMNAR[suffix]
    if suffix in (".tsv", ".txt", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataError(f"cannot tell the format from the extension '{suffix}'", path=str(path),
                    fix="name the file .tsv, .csv, .jsonl, .parquet or .arrow")


def read_bytes(path: Union[str, Path]) -> bytes:
    """The bytes of a data file; a missing, directory or empty (or all-blank) file is a DataError."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "file not found"
        raise DataError(what, path=str(path), fix="check the path (and --data-dir)")
    data = path.read_bytes()
    if not data.strip():
        raise DataError("file is empty", path=str(path), fix="point at a file with a header and rows")
    return data


def read_text(path: Union[str, Path]) -> tuple:
    """(text, sha256) of a UTF-8 file; missing, empty and non-UTF-8 files are DataErrors."""
    path = Path(path)
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})",
                        path=str(path), line=line, fix="re-save the file as UTF-8") from None
    if text.startswith("\ufeff"):  # a byte-order mark written by some editors is not part of the header
        text = text[1:]
    return text, hashlib.sha256(data).hexdigest()


def _read_tsv(path: str, text: str, has_header: bool) -> tuple:
    rows: List[List[str]] = []
    lines: List[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue  # blank lines (usually the last one) carry no row
        rows.append(line.split("\t"))
        lines.append(number)
    return _split_header(path, rows, lines, has_header, "tab-separated", "fix the row (a stray tab?) or remove it")


def _read_csv(path: str, text: str, has_header: bool) -> tuple:
    rows: List[List[str]] = []
    lines: List[int] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for row in reader:
            if row and any(field.strip() for field in row):
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"bad CSV: {e}", path=path, line=start, fix="check quoting on that row") from None
    return _split_header(path, rows, lines, has_header, "comma-separated", "quote fields that contain commas")


def _split_header(path: str, rows: List[List[str]], lines: List[int], has_header: bool, kind: str,
                  fix: str) -> tuple:
    """(header, header line, rows, lines) after checking every row is as wide as the first."""
    header = rows.pop(0) if has_header and rows else None
    header_line = lines.pop(0) if has_header and lines else None
    width = len(header) if header is not None else len(rows[0]) if rows else 0
    for row, number in zip(rows, lines):
        if len(row) != width:
            what = f"the header (line {header_line})" if header is not None else f"line {lines[0]}"
            raise DataError(f"ragged row: {len(row)} {kind} fields, {what} has {width}", path=path, line=number,
                            fix=fix)
    return header, header_line, rows, lines


def _read_jsonl(path: str, text: str) -> tuple:
    header: Optional[List[str]] = None
    rows: List[List[str]] = []
    lines: List[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg} (column {e.colno})", path=path, line=number,
                            fix="write one JSON object per line") from None
        except RecursionError:  # the parser recurses once per level of [ or {
            raise DataError("JSON nested too deeply", path=path, line=number,
                            fix='write one flat object per line, like {"text": "...", "label": "..."}') from None
        if not isinstance(record, dict):
            raise DataError(f"a JSON {type(record).__name__}, not an object", path=path, line=number,
                            fix='write one object per line, like {"text": "...", "label": "..."}')
        if header is None:
            header = list(record.keys())
        missing = [k for k in header if k not in record]
        if missing:
            raise DataError(f"ragged row: no key {missing[0]!r} (the first line has {', '.join(map(repr, header))})",
                            path=path, line=number, fix="give every line the same keys")
        row = [_json_field(record[k]) for k in header]
        try:  # a \ud800-style escape decodes to a lone surrogate, which no UTF-8 text can hold
            "".join(header + row).encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"a \\u{ord(e.object[e.start]):04x} escape is half a surrogate pair, not a character",
                            path=path, line=number,
                            fix="write the character itself, or both halves of the pair") from None
        rows.append(row)
        lines.append(number)
    return header, None, rows, lines


def _json_field(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    if value is None:
        return ""
    # default=str: Parquet lists and structs may hold dates or decimals, which JSON has no type for
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)


def _pyarrow(path: str, format: str):
    try:
        import pyarrow
    except ImportError:
        raise DataError(f"reading {format.capitalize()} files needs pyarrow, which is not installed", path=path,
                        fix="pip install nanoft[parquet]") from None
    return pyarrow


def _arrow_table(pa, data: bytes):
    """An Arrow table from IPC file bytes (Feather v2), IPC stream bytes (`datasets` cache files) or Feather v1."""
    import pyarrow.feather
    import pyarrow.ipc

    readers = (lambda b: pyarrow.ipc.open_file(b).read_all(), lambda b: pyarrow.ipc.open_stream(b).read_all(),
               pyarrow.feather.read_table)
    first: Optional[Exception] = None
    for read in readers:
        try:
            return read(pa.BufferReader(data))
        except (pa.ArrowException, OSError, ValueError) as e:
            first = first or e
    raise first  # type: ignore[misc]


def _read_columnar(path: str, data: bytes, format: str) -> tuple:
    """(header, rows, lines) of a Parquet or Arrow file; lines are 1-based row numbers."""
    pa = _pyarrow(path, format)
    try:
        if format == "parquet":
            import pyarrow.parquet

            table = pyarrow.parquet.read_table(pa.BufferReader(data))
        else:
            table = _arrow_table(pa, data)
        table.validate(full=True)  # offsets and UTF-8 checked before any value is read: damage is an error, not a crash
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        kind = "Parquet" if format == "parquet" else "Arrow IPC/Feather"
        raise DataError(f"not a readable {kind} file ({reason})", path=path,
                        fix="the file may be truncated or of another format: write it again") from None
    header = [str(name) for name in table.column_names]
    if len(set(header)) != len(header):
        twice = next(name for name in header if header.count(name) > 1)
        raise DataError(f"column {twice!r} appears twice", path=path, fix="give every column its own name")
    columns = []
    for name, column in zip(header, table.columns):
        values = column.to_pylist()
        for i, value in enumerate(values):
            if isinstance(value, (bytes, bytearray)):
                try:
                    values[i] = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"column {name!r} holds bytes that are not UTF-8 text", path=path, line=i + 1,
                                    fix="store text columns as strings") from None
        columns.append([_json_field(v) for v in values])
    rows = [list(row) for row in zip(*columns)] if columns else []
    return header, rows, list(range(1, len(rows) + 1))


def read_lines(path: Union[str, Path]) -> Table:
    """A plain text file as a one-column table `text`: one text per non-blank line."""
    text, sha = read_text(path)
    rows: List[List[str]] = []
    lines: List[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            rows.append([line])
            lines.append(number)
    return Table(path=str(path), format="lines", header=["text"], rows=rows, lines=lines, sha256=sha)


def read_table(path: Union[str, Path], format: Optional[str] = None, has_header: bool = True) -> Table:
    """Read a whole TSV/CSV/JSONL/Parquet/Arrow file into a `Table` of strings (JSONL, Parquet and Arrow
    always have named columns)."""
    path = Path(path)
    format = format or detect_format(path)
    if format not in FORMATS:
        raise DataError(f"unknown format '{format}'", path=str(path), fix=f"use one of {', '.join(FORMATS)}")
    if format in ("parquet", "arrow"):
        data = read_bytes(path)
        header, rows, lines = _read_columnar(str(path), data, format)
        if not rows:
            raise DataError("file has columns but no rows", path=str(path), fix="add data rows")
        return Table(path=str(path), format=format, header=header, rows=rows, lines=lines,
                     sha256=hashlib.sha256(data).hexdigest())
    text, sha = read_text(path)
    if format == "tsv":
        header, header_line, rows, lines = _read_tsv(str(path), text, has_header)
    elif format == "csv":
        header, header_line, rows, lines = _read_csv(str(path), text, has_header)
    else:
        header, header_line, rows, lines = _read_jsonl(str(path), text)
    if not rows:
        raise DataError("file has a header but no rows" if header else "file has no rows", path=str(path),
                        fix="add data rows")
    return Table(path=str(path), format=format, header=header, rows=rows, lines=lines, sha256=sha,
                 header_line=header_line)
