"""Logging of the api and worker processes: one line per event, JSON when asked.

:func:`configure_logging` installs one handler on the root logger (stderr), idempotently:
JSON objects (``PREDQ_LOG_JSON=true``, python-json-logger) or ``key=value`` text. Context goes
in ``extra=`` (``job_id``, ``batch_id``, ``request_id``, ...), and so becomes JSON fields.

Contract: nothing predq logs contains input rows (unless ``PREDQ_LOG_INPUTS=true``) or
secrets. As a second line of defence, :class:`RedactSecrets` masks anything shaped like an API
key (``pq_...``), a webhook secret (``whsec_...``), a bearer token or a URL password, in the
message and in string extras, before a record is written.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from predq.shared.settings import Settings

_SECRET_RES = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"\bpq_[A-Za-z0-9_-]{8,}"), "pq_[redacted]"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), "whsec_[redacted]"),
    (re.compile(r"(?i)\b(redis|rediss|sentinel|amqp|https?)://([^:/@\s]*):([^@/\s]+)@"),
     r"\1://\2:[redacted]@"),
)

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", "color_message", "component"}

_MARK = "_predq_handler"


def redact(text: str) -> str:
    """``text`` with secret-looking substrings masked."""
    # Each pattern needs one of these substrings: most lines (an access line) have none.
    if "pq_" not in text and "whsec_" not in text and "://" not in text \
            and "bearer" not in text.lower():
        return text
    for pattern, repl in _SECRET_RES:
        text = pattern.sub(repl, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message, arguments and string extras (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave the record to the formatter's error
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` (the extras, sorted)."""

    def __init__(self, component: str) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if not extras:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        fields = " ".join(f"{k}={_text(v)}" for k, v in sorted(extras.items()))
        return f"{head} {fields}{sep}{tail}"


def _text(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def _json_formatter(component: str) -> logging.Formatter:
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "{levelname}{name}{message}", style="{", timestamp="time",  # ISO 8601, UTC
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"component": component},
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def configure_logging(settings: Settings, component: str) -> None:
    """Route every logger to one stderr handler at ``settings.log_level`` (idempotent).

    ``component`` ("api", "worker", ...) is a field of every JSON line. uvicorn's and Celery's
    own loggers lose their handlers and propagate here, so all output has one format.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(_json_formatter(component) if settings.log_json
                         else TextFormatter(component))
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "celery", "flower"):
        other = logging.getLogger(name)
        other.handlers.clear()
        other.propagate = True
    # The API logs each request itself (predq.api.observability.request_metrics), without client
    # addresses or query
    # strings; uvicorn's access log would add both.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
