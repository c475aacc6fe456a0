"""The API's batching log handler: lines below WARNING wait at most ``flush_s`` and are
written in one write per batch, in order; a WARNING writes everything at once; flush() too."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest

from predq.shared.observability.logs import BatchingStreamHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.written = threading.Event()

    def write(self, s: str) -> int:
        self.writes += 1
        n = super().write(s)
        self.written.set()
        return n


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, CountingStream, BatchingStreamHandler]]:
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, flush_s=0.2)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("predq.test.batches")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_info_lines_are_written_together_within_the_delay(logged: tuple) -> None:
    logger, stream, _ = logged
    for i in range(50):
        logger.info("line %d", i)
    assert stream.writes == 0  # waiting
    assert stream.written.wait(5)
    assert stream.writes == 1
    assert stream.getvalue() == "".join(f"INFO line {i}\n" for i in range(50))


def test_a_warning_writes_what_waits_and_itself_at_once(logged: tuple) -> None:
    logger, stream, _ = logged
    logger.info("first")
    logger.warning("second")
    assert stream.getvalue() == "INFO first\nWARNING second\n" and stream.writes == 1


def test_flush_writes_what_waits(logged: tuple) -> None:
    logger, stream, handler = logged
    logger.info("a")
    handler.flush()
    assert stream.getvalue() == "INFO a\n"
    handler.flush()  # nothing waits: no write
    assert stream.writes == 1


def test_a_full_batch_is_written_at_once() -> None:
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, flush_s=60, max_chars=100)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("predq.test.batches.full")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for _ in range(12):
            logger.info("y" * 9)  # 10 characters a line: the 10th fills the batch
        assert stream.writes == 1
        assert stream.getvalue() == ("y" * 9 + "\n") * 10
    finally:
        logger.removeHandler(handler)


def test_the_api_logs_through_it_and_the_worker_does_not() -> None:
    from predq.shared.observability.logs import configure_logging
    from predq.shared.settings import Settings

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        for component, batching in (("api", True), ("worker", False)):
            configure_logging(Settings(), component)
            [ours] = [h for h in root.handlers if h not in before]
            assert isinstance(ours, BatchingStreamHandler) is batching, component
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        root.setLevel(level)
