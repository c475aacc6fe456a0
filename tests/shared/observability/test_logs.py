"""predq.shared.observability.logs: JSON or text lines with context fields, and secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from predq.shared.observability.logs import (
    RedactSecrets,
    TextFormatter,
    _json_formatter,
    configure_logging,
)
from predq.shared.settings import Settings


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("predq.test.logging")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_context_fields(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(_json_formatter("worker"))
    logger.info("batch %s: %d jobs", "b1", 2, extra={"batch_id": "b1", "job_ids": ["j1", "j2"]})
    line = json.loads(stream.getvalue())
    assert line["message"] == "batch b1: 2 jobs"
    assert line["level"] == "INFO" and line["logger"] == "predq.test.logging"
    assert line["component"] == "worker"
    assert line["batch_id"] == "b1" and line["job_ids"] == ["j1", "j2"]
    assert line["time"].endswith("+00:00")  # ISO 8601, UTC


def test_text_lines_append_the_fields(capture: tuple) -> None:
    logger, stream, handler = capture
    handler.setFormatter(TextFormatter("api"))
    logger.info("GET /healthz 200", extra={"job_id": "j1", "route": "/healthz"})
    assert stream.getvalue().rstrip().endswith("GET /healthz 200 job_id=j1 route=/healthz")


@pytest.mark.parametrize("secret", [
    "Bearer pq_abcdefghijklmnopqrstuvwxyz012345",
    "pq_abcdefghijklmnopqrstuvwxyz012345",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "redis://:hunter2hunter2@redis:6379/0",
])
def test_secrets_are_masked_in_messages_and_fields(capture: tuple, secret: str) -> None:
    logger, stream, handler = capture
    handler.setFormatter(_json_formatter("api"))
    logger.warning("saw %s", secret, extra={"detail": f"x {secret} y"})
    text = stream.getvalue()
    core = secret.split("Bearer ")[-1].split("://:")[-1].split("@")[0]
    assert core not in text
    assert "[redacted]" in json.loads(text)["message"]
    assert "[redacted]" in json.loads(text)["detail"]


def test_configure_logging_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        settings = Settings(log_json=True, log_level="warning")
        configure_logging(settings, "api")
        configure_logging(settings, "api")
        ours = [h for h in root.handlers if h not in before]
        assert len(ours) == 1
        assert root.level == logging.WARNING
        assert logging.getLogger("uvicorn.access").propagate is False
        assert logging.getLogger("uvicorn.error").propagate is True
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        root.setLevel(level)
