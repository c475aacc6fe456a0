"""One handler answers every named error: status, title, detail and headers come from the error.

A bare FastAPI app with ``predq.api.problems.install`` and one route that raises what it is told to:
no Redis, no lifespan. Every class in ``predq.shared.errors`` is checked, so an error added there is
checked too.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.exceptions
from fastapi import FastAPI

from predq.api import problems
from predq.api.app import create_app
from predq.shared import errors
from predq.shared.errors import PredqError, RetryLater
from predq.shared.settings import Settings

NAMED = sorted((c for c in vars(errors).values()
                if isinstance(c, type) and issubclass(c, PredqError)), key=lambda c: c.__name__)


def make(cls: type[PredqError]) -> PredqError:
    """An instance of ``cls`` with a recognisable detail (and retry_after when it takes one)."""
    if "retry_after" in inspect.signature(cls).parameters:
        return cls(f"detail of {cls.__name__}", retry_after=7)  # type: ignore[call-arg]
    return cls(f"detail of {cls.__name__}")


@pytest.fixture
async def raising() -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, BaseException]]]:
    """A client of an app whose ``GET /raise`` raises ``box["error"]``."""
    box: dict[str, BaseException] = {}
    app = FastAPI()
    problems.install(app)

    @app.get("/raise")
    async def _raise() -> None:
        raise box["error"]

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, box


def test_the_vocabulary_is_all_there() -> None:
    names = {c.__name__ for c in NAMED}
    assert {"QueueFull", "RateLimited", "StoreUnavailable", "Unauthorized"} <= names
    assert "JobExpired" not in names  # it was never raised


@pytest.mark.parametrize("cls", NAMED, ids=lambda c: c.__name__)
async def test_every_named_error_answers_what_it_carries(
        raising: tuple[httpx.AsyncClient, dict[str, BaseException]], cls: type[PredqError]
) -> None:
    client, box = raising
    box["error"] = error = make(cls)
    r = await client.get("/raise")
    assert r.status_code == cls.status
    assert r.headers["content-type"] == problems.PROBLEM
    assert r.json() == {"type": cls.type_, "title": cls.title, "status": cls.status,
                        "detail": f"detail of {cls.__name__}"}
    for name, value in error.headers.items():
        assert r.headers[name] == value
    if issubclass(cls, RetryLater):
        assert r.headers["retry-after"] == "7"
    else:
        assert "retry-after" not in r.headers


async def test_queue_full_and_rate_limited_carry_their_retry_after(
        raising: tuple[httpx.AsyncClient, dict[str, BaseException]]) -> None:
    client, box = raising
    box["error"] = errors.QueueFull("queue of iris is full", retry_after=12)
    r = await client.get("/raise")
    assert (r.status_code, r.headers["retry-after"], r.json()["title"]) == (429, "12",
                                                                            "Queue full")
    box["error"] = errors.RateLimited("rate limit of 1 per 1 minute exceeded", retry_after=59)
    r = await client.get("/raise")
    assert (r.status_code, r.headers["retry-after"], r.json()["title"]) == (
        429, "59", "Too many requests")


async def test_an_error_unknown_to_the_api_is_answered_from_what_it_carries(
        raising: tuple[httpx.AsyncClient, dict[str, BaseException]]) -> None:
    """No case per class: a new error with its own status, headers and errors needs no code."""

    class Teapot(PredqError):
        status = 418
        title = "I'm a teapot"
        headers = {"X-Brew": "earl grey"}

    client, box = raising
    box["error"] = Teapot("short and stout", errors=[{"loc": ["body"], "msg": "m", "type": "t"}])
    r = await client.get("/raise")
    assert r.status_code == 418
    assert r.headers["x-brew"] == "earl grey"
    assert r.json() == {"type": "about:blank", "title": "I'm a teapot", "status": 418,
                        "detail": "short and stout",
                        "errors": [{"loc": ["body"], "msg": "m", "type": "t"}]}


async def test_redis_down_is_a_store_unavailable_503(
        raising: tuple[httpx.AsyncClient, dict[str, BaseException]]) -> None:
    client, box = raising
    box["error"] = redis.exceptions.ConnectionError("Connection refused")
    r = await client.get("/raise")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json()["title"] == errors.StoreUnavailable.title


def test_the_app_has_one_handler_for_all_named_errors() -> None:
    app = create_app(Settings(auth_enabled=False))
    named: list[Any] = [k for k in app.exception_handlers
                        if isinstance(k, type) and issubclass(k, PredqError)]
    assert named == [PredqError]
