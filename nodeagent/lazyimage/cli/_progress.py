"""A progress bar on stderr when it is a terminal; silent otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from lazyimage.convert import LayerReport

__all__ = ["ConvertProgress", "format_bytes"]


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError("unreachable")


class ConvertProgress:
    """Implements ConvertObserver. Thread-safe; redraws at most ten times a second."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._layers_done = 0
        self._last_draw = 0.0

    def add_work(self, nbytes: int) -> None:
        with self._lock:
            self._total += nbytes

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
        self._draw()

    def layer_done(self, report: LayerReport) -> None:
        with self._lock:
            self._layers_done += 1
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            total = max(self._total, 1)
            fraction = min(self._done / total, 1.0)
            width = 30
            filled = int(fraction * width)
            bar = "#" * filled + "." * (width - filled)
            text = (
                f"\r[{bar}] {fraction * 100:5.1f}%  {format_bytes(self._done)} of "
                f"{format_bytes(self._total)}  {self._layers_done} layers done"
            )
        self._stream.write(text)
        self._stream.flush()

    def finish(self) -> None:
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()
