"""Progress of a batch on a terminal: rows done of total, rows per second, ETA.

:func:`progress_callback` turns ``wait(progress=...)``'s argument into the callback the wait
loop calls with each batch document: ``True`` draws a tqdm bar on stderr, a callable is used
as given, anything false shows nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Callback = Callable[[dict[str, Any]], None]


class Bar:
    """A tqdm bar fed from batch documents (the server's counts, rate and ETA)."""

    def __init__(self, file: Any = None) -> None:
        import shutil

        from tqdm import tqdm

        # A terminal that reports no size (a fresh pty, some CI runners) still gets a bar.
        width = shutil.get_terminal_size((100, 24)).columns or 100
        self._bar = tqdm(total=None, unit="rows", ncols=width, file=file or sys.stderr,
                         desc="scoring")
        self._shown = 0

    def __call__(self, doc: dict[str, Any]) -> None:
        counts = doc.get("counts") or {}
        total = counts.get("total")
        done = int(counts.get("done") or 0) + int(counts.get("failed") or 0)
        if total is not None and self._bar.total != total:
            self._bar.total = total
        if done > self._shown:
            self._bar.update(done - self._shown)
            self._shown = done
        chunks = doc.get("chunks") or {}
        eta = doc.get("eta_seconds")
        self._bar.set_postfix_str(
            f"{doc.get('status')} chunks {chunks.get('done', 0)}/{chunks.get('total') or '?'}"
            f" failed {counts.get('failed') or 0}"
            + (f" eta {eta:.0f}s" if isinstance(eta, int | float) else ""), refresh=True)

    def close(self) -> None:
        self._bar.close()


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
