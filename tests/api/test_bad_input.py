"""Every kind of bad input gets a clear 4xx problem+json naming the row and field, and
nothing is enqueued."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from predq.demo import iris_sample_rows, mixed_sample_rows

pytestmark = pytest.mark.integration
JSON = {"content-type": "application/json"}


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def queued(settings_env: dict[str, str]) -> int:
    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    return int(client.llen(settings_env["PREDQ_DEFAULT_QUEUE"]))


def iris_row(**over: Any) -> dict[str, Any]:
    return {**iris_sample_rows(1, seed=1)[0], **over}


BAD_ROWS = [
    ("wrong type", "iris", [iris_row(), iris_row(sepal_width="wide")], 1, "sepal_width",
     "float_type"),
    ("missing feature", "iris", [{"sepal_length": 1, "sepal_width": 1, "petal_length": 1}], 0,
     "petal_width", "missing"),
    ("unknown feature", "iris", [iris_row(), iris_row(), iris_row(colour=1)], 2, "colour",
     "extra_forbidden"),
    ("unknown category", "mixed", [*mixed_sample_rows(3), {**mixed_sample_rows(1)[0],
                                                           "color": "purple"}], 3, "color",
     "literal_error"),
    ("null without missing support", "iris", [iris_row(petal_length=None)], 0, "petal_length",
     "float_type"),
]


@pytest.mark.parametrize(("case", "model", "rows", "bad_row", "field", "etype"), BAD_ROWS,
                         ids=[c[0] for c in BAD_ROWS])
@pytest.mark.parametrize("route", ["jobs", "predict"])
async def test_bad_rows_give_422_naming_row_and_field(
    api: Any, settings_env: dict[str, str], route: str, case: str, model: str,
    rows: list[dict[str, Any]], bad_row: int, field: str, etype: str,
) -> None:
    async with api() as c:
        r = await c.post(f"/v1/models/{model}/{route}", json={"inputs": rows})
    body = assert_problem(r, 422)
    assert {"loc": ["body", "inputs", bad_row, field], "type": etype} in [
        {"loc": e["loc"], "type": e["type"]} for e in body["errors"]]
    assert str(bad_row) in body["detail"]
    assert queued(settings_env) == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_nan_and_infinity_give_422(api: Any, settings_env: dict[str, str],
                                         literal: str) -> None:
    raw = ('{"inputs":[{"sepal_length":' + literal
           + ',"sepal_width":1,"petal_length":1,"petal_width":1}]}')
    async with api() as c:
        r = await c.post("/v1/models/iris/jobs", content=raw, headers=JSON)
    body = assert_problem(r, 422)
    assert body["errors"][0]["loc"] == ["body", "inputs", 0, "sepal_length"]
    assert queued(settings_env) == 0


async def test_many_bad_rows_are_all_listed(api: Any) -> None:
    rows = [iris_row(sepal_length="x") if i % 2 else iris_row() for i in range(10)]
    async with api() as c:
        r = await c.post("/v1/models/iris/jobs", json={"inputs": rows})
    body = assert_problem(r, 422)
    assert [e["loc"][2] for e in body["errors"]] == [1, 3, 5, 7, 9]


@pytest.mark.parametrize(("raw", "status", "loc"), [
    ('{"inputs": []}', 422, ["body", "inputs"]),
    ('{"inputs": [1, 2]}', 422, ["body", "inputs", 0]),
    ('{"inputs": "rows"}', 422, ["body", "inputs"]),
    ("[]", 422, ["body"]),
    ('{"inputs": [{"sepal_length": 1}', 400, None),
    ("not json", 400, None),
    ('{"inputs": [], "version": 3}', 422, ["body", "version"]),
])
async def test_malformed_and_empty_bodies(api: Any, settings_env: dict[str, str], raw: str,
                                          status: int, loc: list[Any] | None) -> None:
    async with api() as c:
        r = await c.post("/v1/models/iris/jobs", content=raw, headers=JSON)
    body = assert_problem(r, status)
    if loc is not None:
        assert loc in [e["loc"] for e in body["errors"]]
    assert queued(settings_env) == 0


async def test_too_many_rows(api: Any, settings_env: dict[str, str]) -> None:
    async with api(max_rows_per_job=5) as c:
        r = await c.post("/v1/models/iris/jobs", json={"inputs": [iris_row()] * 6})
    body = assert_problem(r, 422)
    assert body["errors"][0]["loc"] == ["body", "inputs"]
    assert "5 rows" in body["errors"][0]["msg"]
    assert queued(settings_env) == 0


async def test_body_over_the_size_limit(api: Any, settings_env: dict[str, str]) -> None:
    async with api(max_body_bytes=2000) as c:
        r = await c.post("/v1/models/iris/jobs", json={"inputs": [iris_row()] * 100})
        assert_problem(r, 413)

        async def chunks() -> Any:  # no Content-Length: the limit holds while streaming
            for _ in range(100):
                yield b'{"inputs": [' + b" " * 100

        r = await c.post("/v1/models/iris/jobs", content=chunks(), headers=JSON)
        assert_problem(r, 413)
    assert queued(settings_env) == 0


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_wrong_content_type(api: Any, ctype: str) -> None:
    async with api() as c:
        r = await c.post("/v1/models/iris/jobs", content=b'{"inputs": []}',
                         headers={"content-type": ctype})
    assert_problem(r, 415)


@pytest.mark.parametrize(("path", "version"), [
    ("/v1/models/nope/jobs", None),
    ("/v1/models/..%2f..%2fetc/jobs", None),
    ("/v1/models/iris/jobs", "99"),
    ("/v1/models/iris/jobs", "no-such-alias"),
])
async def test_unknown_model_or_version(api: Any, path: str, version: str | None) -> None:
    payload: dict[str, Any] = {"inputs": [iris_row()]}
    if version:
        payload["version"] = version
    async with api() as c:
        r = await c.post(path, json=payload)
    assert_problem(r, 404)


@pytest.mark.parametrize("job_id", ["00000000-0000-4000-8000-000000000000", "nope", "x" * 300])
async def test_unknown_job_id(api: Any, job_id: str) -> None:
    async with api() as c:
        assert_problem(await c.get(f"/v1/jobs/{job_id}"), 404)
        assert_problem(await c.delete(f"/v1/jobs/{job_id}"), 404)


async def test_bad_query_and_headers(api: Any) -> None:
    async with api() as c:
        assert_problem(await c.get("/v1/jobs/x?wait=-1"), 422)
        assert_problem(await c.get("/v1/jobs/x?wait=soon"), 422)
        r = await c.post("/v1/models/iris/jobs", json={"inputs": [iris_row()]},
                         headers={"Idempotency-Key": "k" * 300})
        assert_problem(r, 422)
        assert_problem(await c.get("/v1/nowhere"), 404)
        assert_problem(await c.put("/v1/jobs/x"), 405)
