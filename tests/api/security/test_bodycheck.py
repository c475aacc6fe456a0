"""The capped JSON body reader (predq.api.security.bodycheck.read_json_body).

Directly, over a Starlette request (no app, no Redis): the Content-Type check, the declared
length and the running byte count. Then over the real app, that job submissions and batch
requests both answer its problems.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import Request

from predq.api.security.bodycheck import read_json_body
from predq.shared.errors import PayloadTooLarge, UnsupportedMediaType


def request(chunks: list[bytes], headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b""}]
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return messages[len(received) - 1]

    req = Request({"type": "http", "method": "POST", "path": "/", "headers": raw}, receive)
    req.state.received = received
    return req


JSON = {"content-type": "application/json"}


async def test_a_json_body_under_the_limit_is_read_whole() -> None:
    body = await read_json_body(request([b'{"a":', b" 1}"], JSON), 100)
    assert body == b'{"a": 1}'


@pytest.mark.parametrize("ctype", ["application/json; charset=utf-8", "application/merge+json",
                                   "APPLICATION/JSON"])
async def test_json_content_types_are_accepted(ctype: str) -> None:
    assert await read_json_body(request([b"{}"], {"content-type": ctype}), 100) == b"{}"


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"},
                                     {"content-type": "application/jsonx"}])
async def test_any_other_content_type_is_415(headers: dict[str, str]) -> None:
    with pytest.raises(UnsupportedMediaType, match="send Content-Type: application/json"):
        await read_json_body(request([b"{}"], headers), 100)


async def test_a_declared_length_over_the_limit_is_413_before_reading() -> None:
    req = request([b"{}"], {**JSON, "content-length": "101"})
    with pytest.raises(PayloadTooLarge, match="the body is 101 bytes; the limit is 100"):
        await read_json_body(req, 100)
    assert req.state.received == []  # not one byte read


async def test_an_undeclared_body_is_cut_off_at_the_limit() -> None:
    req = request([b"x" * 60, b"x" * 60, b"x" * 60], JSON)
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 100 bytes"):
        await read_json_body(req, 100)
    assert len(req.state.received) == 2  # stopped at the chunk that passed the limit


async def test_a_lying_content_length_does_not_lift_the_limit() -> None:
    req = request([b"x" * 80, b"x" * 80], {**JSON, "content-length": "10"})
    with pytest.raises(PayloadTooLarge):
        await read_json_body(req, 100)


async def test_the_limit_itself_is_allowed() -> None:
    body = b"[" + b"1," * 48 + b"10]"
    assert len(body) == 100
    assert await read_json_body(request([body], {**JSON, "content-length": "100"}), 100) == body


async def test_a_caller_names_its_own_limit() -> None:
    for headers in ({**JSON, "content-length": "500"}, JSON):
        with pytest.raises(PayloadTooLarge, match="^a batch request is at most 100 bytes$"):
            await read_json_body(request([b"x" * 500], headers), 100,
                                 too_large="a batch request is at most 100 bytes")


async def _chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b" " * size


@pytest.mark.integration
@pytest.mark.parametrize(("route", "detail"), [
    ("jobs", "exceeds the limit of 2048 bytes"),
    ("batches", "a batch request is at most 262144 bytes"),
])
async def test_both_routes_answer_the_readers_problems(api: Any, route: str, detail: str
                                                       ) -> None:
    async with api(max_body_bytes=2048) as c:
        url = f"/v1/models/iris/{route}"
        r = await c.post(url, content=b"{}", headers={"content-type": "text/plain"})
        assert r.status_code == 415, r.text
        assert r.headers["content-type"] == "application/problem+json"
        r = await c.post(url, content=_chunks(300, 1024), headers=JSON)  # no Content-Length
        assert r.status_code == 413, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert detail in r.json()["detail"]
