"""The one table renderer (nanoft.tables) behind `nanoft report`, `nanoft info` and the benchmarks."""
import csv
import io

import pytest

from nanoft.tables import format_rows, render_table

HEADER = ["experiment", "score", "note"]
BODY = [["lora", "0.9000", 'has "quotes", and a comma'], ["full-finetune", "0.85", "-"]]


def test_csv_reads_back_to_the_same_cells():
    text = render_table(HEADER, BODY, "csv")
    assert list(csv.reader(io.StringIO(text))) == [HEADER] + BODY


def test_plain_columns_line_up_under_a_rule():
    lines = render_table(HEADER, BODY, "table", right=[False, True, False]).splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-", " "}
    starts = [i + 1 for i, c in enumerate(lines[1]) if c == " " and lines[1][i + 1] == "-"]
    for line in lines:  # every column starts where the rule's dashes start
        assert all(line[s - 2:s] == "  " for s in starts)
    assert lines[3].split()[:2] == ["full-finetune", "0.85"] and lines[3].index("0.85") + 4 == lines[2].index("0.9000") + 6
    assert render_table(HEADER, BODY, rule=False).splitlines()[1].startswith("lora")


def test_markdown_marks_right_aligned_columns():
    lines = render_table(HEADER, BODY, "markdown", right=[False, True, False]).splitlines()
    cells = [c for c in lines[1].strip("|").split("|")]
    assert [c.endswith(":") for c in cells] == [False, True, False]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == BODY[0]
    assert len({len(line) for line in lines}) == 1


def test_rows_of_dicts_format_numbers_and_gaps():
    text = format_rows([{"name": "a", "ms": 1234.56, "frac": 0.123456, "x": None},
                        {"name": "b", "ms": float("nan"), "frac": 2.0, "x": 3}], fmt="csv")
    assert text.splitlines() == ["name,ms,frac,x", "a,1234.6,0.1235,-", "b,-,2.000,3"]
    assert format_rows([]) == "(no rows)"
    with pytest.raises(ValueError, match="unknown table format"):
        render_table(HEADER, BODY, "html")


def test_markdown_escapes_pipes_inside_cells():
    """A cell holding '|' (e.g. the header '|a - b| > 2 se') stays one cell: GFM splits rows on unescaped pipes."""
    import re

    lines = render_table(["pair", "|a - b| > 2 se"], [["x|y", "yes"]], "markdown").splitlines()
    for line in lines:
        cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
        assert len(cells) == 2, line
    assert [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", lines[2].strip()[1:-1])] == ["x|y", "yes"]
    # CSV and plain text keep the cell as it is
    assert list(csv.reader(io.StringIO(render_table(["a|b"], [["c|d"]], "csv")))) == [["a|b"], ["c|d"]]
    assert render_table(["a|b"], [["c|d"]], "table").splitlines()[2] == "c|d"
