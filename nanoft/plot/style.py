"""One look for every picture, and the two things that make a picture file reproducible.

matplotlib is imported only here, on first use, so `import nanoft.plot` works without it and a missing
install is one clear line. Figures are built as `matplotlib.figure.Figure` objects (no pyplot, no global
backend or state), inside `styled()`, which sets fixed fonts and sizes for that block only. `save` writes
PNG or SVG; an SVG carries no date and its element ids come from a fixed salt, so the same input gives
the same bytes.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterator, List, Tuple, Union

from nanoft.errors import ConfigError

FORMATS = ("png", "svg")
DPI = 150
# colour-blind-safe qualitative palette (Okabe-Ito), then greys; series get colours in order
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
          "#999999", "#666666"]
STYLE = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs everywhere
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "path",  # glyphs as paths: the file does not depend on the viewer's fonts
    "svg.hashsalt": "nanoft",  # fixed element ids (default: random per save)
    "savefig.dpi": DPI,
}


def require_matplotlib() -> Any:
    """The matplotlib module, or a one-line ConfigError saying how to install it."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ConfigError("pictures need matplotlib, which is not installed",
                          fix="pip install nanoft[plot]") from None
    return matplotlib


@contextlib.contextmanager
def styled() -> Iterator[None]:
    """Build or save figures with nanoft's fixed style (restored on exit)."""
    matplotlib = require_matplotlib()
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(columns: int = 1, width: float = 6.4, height: float = 4.0) -> Tuple[Any, List[Any]]:
    """(figure, axes) with `columns` panels side by side; call inside `styled()`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = list(fig.subplots(1, columns, squeeze=False)[0])
    return fig, axes


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def picture_format(output: Union[str, Path]) -> str:
    fmt = Path(output).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"cannot tell the picture format of {str(output)!r}", fix="name the output .png or .svg")
    return fmt


def render(fig: Any, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes; no date in the file, so the bytes depend on the figure only."""
    buf = io.BytesIO()
    with styled():
        metadata = {"Date": None} if fmt == "svg" else {}
        fig.savefig(buf, format=fmt, metadata=metadata)
    return buf.getvalue()


def save(fig: Any, output: Union[str, Path]) -> Path:
    """Write the figure to `output` (.png or .svg), atomically: a failed save leaves no half file."""
    from nanoft.io import atomic_write_bytes

    data = render(fig, picture_format(output))
    path = Path(output)
    atomic_write_bytes(path, lambda f: f.write(data))  # creates the folder, as every nanoft output does
    return path
