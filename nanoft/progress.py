"""A small progress bar on stderr (no tqdm): redrawn in place on a terminal, a line every 10% in logs."""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class ProgressBar:
    def __init__(self, total: int, desc: str = "", enabled: bool = True, stream: Optional[TextIO] = None,
                 width: int = 24, initial: int = 0) -> None:
        self.total = max(1, total)
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.width = width
        self.n = initial
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = initial * 10 // self.total
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.postfix = ""

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix = "  ".join(f"{k} {_fmt(v)}" for k, v in postfix.items())
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty and (now - self._last_draw > 0.2 or self.n >= self.total):
            self._draw(end="")
            self._last_draw = now
        elif not self.tty and self.n * 10 // self.total > self._last_decile:
            self._last_decile = self.n * 10 // self.total
            self._draw(end="\n")

    def _draw(self, end: str) -> None:
        frac = min(1.0, self.n / self.total)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}{self.desc} [{bar}] {self.n}/{self.total} {elapsed:.0f}s  {self.postfix}\033[K"
                          if self.tty else f"{self.desc} [{bar}] {self.n}/{self.total} {elapsed:.0f}s  {self.postfix}")
        self.stream.write(end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)
