"""predq.shared.errors: every named error carries its HTTP status, title and headers."""

from __future__ import annotations

import pytest

from predq.shared import errors
from predq.shared.errors import PredqError, QueueFull, RateLimited, RetryLater, StoreUnavailable

NAMED = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, PredqError)]


@pytest.mark.parametrize("cls", NAMED, ids=lambda c: c.__name__)
def test_each_error_has_an_http_status_and_a_title(cls: type[PredqError]) -> None:
    assert 400 <= cls.status <= 599
    assert cls.title.strip()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cls.headers.items())


@pytest.mark.parametrize("cls", [QueueFull, RateLimited, StoreUnavailable])
def test_retry_later_errors_compute_their_retry_after(cls: type[RetryLater]) -> None:
    a, b = cls("a", retry_after=3), cls("b", retry_after=40)
    assert (a.headers["Retry-After"], b.headers["Retry-After"]) == ("3", "40")
    assert (a.retry_after, b.retry_after) == (3, 40)
    assert "Retry-After" not in cls.headers  # the class's headers are not shared state


def test_retry_later_keeps_the_class_headers() -> None:
    class Busy(RetryLater):
        status = 503
        headers = {"Cache-Control": "no-store"}

    assert Busy("x", retry_after=1).headers == {"Cache-Control": "no-store", "Retry-After": "1"}
    assert Busy.headers == {"Cache-Control": "no-store"}


def test_unauthorized_names_its_scheme() -> None:
    assert errors.Unauthorized("x").headers == {"WWW-Authenticate": 'Bearer realm="predq"'}
