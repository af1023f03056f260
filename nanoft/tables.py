"""One table renderer for every report: aligned plain text, Markdown, or CSV.

`nanoft report` (string cells it formats itself) and the benchmarks (rows of dicts with numbers)
both print tables; they share this module so a table looks the same wherever it comes from.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Dict, List, Optional, Sequence

FORMATS = ("table", "markdown", "csv")


def render_table(header: Sequence[str], body: Sequence[Sequence[str]], fmt: str = "table",
                 right: Optional[Sequence[bool]] = None, rule: bool = True) -> str:
    """header + rows of string cells as text.

    fmt: "table" (columns two spaces apart, a dashed rule under the header), "markdown" or "csv".
    right: per column, right-align it (numbers; Markdown marks it `---:`); default all left.
    rule: the dashed line under a plain-text header (off for a compact listing)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return buf.getvalue().rstrip("\n")
    if fmt == "markdown":  # a "|" inside a cell would end it: escape it, as GitHub-flavoured Markdown reads it
        header = [h.replace("|", "\\|") for h in header]
        body = [[c.replace("|", "\\|") for c in row] for row in body]
    right = list(right) if right is not None else [False] * len(header)
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return ("| " + " | ".join(parts) + " |") if fmt == "markdown" else "  ".join(parts)

    lines = [line(header)]
    if fmt == "markdown":
        lines.append("|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|")
    elif rule:
        lines.append("  ".join("-" * w for w in widths))
    lines += [line(row) for row in body]
    return "\n".join(lines)


def format_cell(value: Any) -> str:
    """A number with the digits that matter at its size; '-' for None and NaN."""
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.3f}"
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def format_rows(rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None, fmt: str = "table") -> str:
    """Rows of dicts as a table; numeric columns (all int/float/None) are right-aligned."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    body: List[List[str]] = [[format_cell(r.get(c)) for c in columns] for r in rows]
    right = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns]
    return render_table(columns, body, fmt, right)


__all__ = ["FORMATS", "render_table", "format_cell", "format_rows"]
