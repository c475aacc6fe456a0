"""Body nesting depth and per-IP rate limits, over the real app and a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from predq.api.app import create_app
from predq.demo import iris_sample_rows
from predq.shared.settings import Settings

pytestmark = pytest.mark.integration
JSON = {"content-type": "application/json"}


def nested(depth: int) -> bytes:
    """``depth`` levels of arrays: ``[[...]]``."""
    return b"[" * depth + b"]" * depth


def job_body(metadata: bytes) -> bytes:
    return b'{"inputs":' + orjson.dumps(iris_sample_rows(1)) + b',"metadata":' + metadata + b"}"


@pytest.mark.parametrize("route", ["jobs", "predict"])
@pytest.mark.parametrize("body", [
    nested(100_000),
    b'{"version":"1","inputs":' + nested(100_000) + b"}",
    job_body(b'{"a":' + nested(100_000) + b"}"),
    b'{"inputs":[' + b'{"x":' * 50_000 + b"1" + b"}" * 50_000 + b"]}",
], ids=["top", "with-version", "metadata", "objects"])
async def test_a_100k_deep_body_gets_422_not_a_crash(api: Any, route: str, body: bytes
                                                     ) -> None:
    async with api() as c:
        r = await c.post(f"/v1/models/iris/{route}", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["errors"][0]["type"] == "too_deep"
    assert problem["errors"][0]["loc"][0] == "body"


async def test_the_error_names_where_the_body_is_too_deep(api: Any) -> None:
    async with api(max_json_depth=6) as c:
        ok = job_body(b'{"a":{"b":[[[1]]]}}')  # body, metadata, a, b[, [, [: six levels
        assert (await c.post("/v1/models/iris/jobs", content=ok, headers=JSON)).status_code == 202
        deep = job_body(b'{"a":{"b":[[[[1]]]], "c": 2}}')
        r = await c.post("/v1/models/iris/jobs", content=deep, headers=JSON)
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["loc"] == ["body", "metadata", "a", "b", 0, 0, 0]
    assert "at most 6 levels" in err["msg"]
    assert "metadata/a/b/0/0/0" in r.json()["detail"]


async def test_brackets_inside_strings_do_not_count(api: Any) -> None:
    async with api(max_json_depth=4) as c:
        body = job_body(orjson.dumps({"note": "[[[[[[{{{{{{ \\\" [[[["}))
        r = await c.post("/v1/models/iris/jobs", content=body, headers=JSON)
    assert r.status_code == 202, r.text


@asynccontextmanager
async def app_client(settings: Settings, client_ip: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_without_auth_the_rate_limit_is_per_client_ip(
        registry_with_models: Any, settings_env: dict[str, str]) -> None:
    settings = Settings(auth_enabled=False, rate_limit="3/minute")
    async with app_client(settings, "10.1.1.1") as a, app_client(settings, "10.2.2.2") as b:
        assert [(await a.get("/v1/models")).status_code for _ in range(3)] == [200] * 3
        r = await a.get("/v1/models")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert (await b.get("/v1/models")).status_code == 200
        # Unauthenticated routes (probes, docs) are never limited.
        assert (await a.get("/healthz")).status_code == 200
        assert (await a.get("/openapi.json")).status_code == 200


async def test_an_empty_rate_limit_turns_limiting_off(
        registry_with_models: Any, settings_env: dict[str, str]) -> None:
    async with app_client(Settings(auth_enabled=False, rate_limit=""), "10.3.3.3") as c:
        assert {(await c.get("/v1/models")).status_code for _ in range(20)} == {200}


def test_limit_settings_reject_nonsense() -> None:
    from pydantic import ValidationError

    for bad in ({"rate_limit": "often"}, {"rate_limit": "0/minute"}, {"max_json_depth": 0},
                {"max_json_depth": 10_000}):
        with pytest.raises(ValidationError):
            Settings(**bad)
