"""Progress of a batch on a terminal: rows done of total, rows per second, ETA.

:func:`progress_callback` turns ``wait(progress=...)``'s argument into the callback the wait
loop calls with each batch document: ``True`` draws a bar on stderr, a callable is used
as given, anything false shows nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from predq.client.types import TERMINAL

Callback = Callable[[dict[str, Any]], None]


class Bar:
    """A one-line progress bar on a terminal, fed from batch documents (the server's counts,
    rate and ETA): ``scoring [#####.....] 150/300 rows 50% 120 rows/s ETA 1s chunks 3/6``.

    Redrawn in place with a carriage return, at most every ``interval`` seconds; the last
    state is always drawn, and :meth:`close` ends the line."""

    def __init__(self, file: Any = None, interval: float = 0.2) -> None:
        import shutil

        self._file = file or sys.stderr
        # A terminal that reports no size (a fresh pty, some CI runners) still gets a bar.
        self._width = shutil.get_terminal_size((100, 24)).columns or 100
        self._interval = interval
        self._last = 0.0
        self._drawn = False
        self._line = ""

    def __call__(self, doc: dict[str, Any]) -> None:
        import time

        self._line = render_line(doc, self._width)
        now = time.monotonic()
        if now - self._last >= self._interval or doc.get("status") in TERMINAL:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        self._file.write("\r" + self._line.ljust(self._width - 1)[: self._width - 1])
        self._file.flush()
        self._drawn = True

    def close(self) -> None:
        if self._line:
            self._draw()
        if self._drawn:
            self._file.write("\n")
            self._file.flush()


def render_line(doc: dict[str, Any], width: int = 100) -> str:
    counts = doc.get("counts") or {}
    chunks = doc.get("chunks") or {}
    total = counts.get("total")
    done = int(counts.get("done") or 0) + int(counts.get("failed") or 0)
    rate = doc.get("rows_per_second")
    eta = doc.get("eta_seconds")
    parts = [str(doc.get("status", ""))]
    if total:
        cells = max(10, min(30, width - 80))
        filled = int(cells * min(done, total) / total)
        parts.append(f"[{'#' * filled}{'.' * (cells - filled)}] {done}/{total} rows "
                     f"{100 * done // total}%")
    else:
        parts.append(f"{done} rows")
    if isinstance(rate, int | float):
        parts.append(f"{rate:,.0f} rows/s")
    if isinstance(eta, int | float) and doc.get("status") not in TERMINAL:
        parts.append(f"ETA {_duration(eta)}")
    parts.append(f"chunks {chunks.get('done', 0)}/{chunks.get('total') or '?'}")
    parts.append(f"failed {counts.get('failed') or 0}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


@contextmanager
def progress_callback(progress: bool | Callback | None) -> Iterator[Callback | None]:
    if not progress:
        yield None
        return
    if callable(progress):
        yield progress
        return
    bar = Bar()
    try:
        yield bar
    finally:
        bar.close()
