"""Bodies the JSON parser accepts (or refuses) get a 2xx or a 4xx problem+json, never a 500,
and what is stored is exactly what was sent (issue 13, "Requests the server must answer").

- integers beyond 64 bits, NaN and Infinity in ``metadata``: 422 naming where (they were a
  500 from orjson, or stored as ``null``); the 64-bit extremes round-trip exactly;
- lone surrogates in any string of the body (metadata, string features, webhook url,
  version): 400, nothing enqueued;
- an escaped ``version`` key (``"\\u0076ersion"``) selects that version: the version comes
  from the parsed body, not from a byte search;
- a Content-Length that is not ASCII digits.

Idempotency ("Idempotency and metrics that tell the truth", and issue 8's replay header):
a key reused on another model's URL is a 409 naming the model; a replay describes the stored
job; ``/predict`` replays carry ``Idempotent-Replayed: true`` as ``/jobs`` does.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from predq.demo import iris_sample_rows, mixed_sample_rows
from predq.push import push_model
from tests.api.test_bad_input import JSON, assert_problem, queued

pytestmark = pytest.mark.integration

ROW = b'{"sepal_length":1,"sepal_width":1,"petal_length":1,"petal_width":1}'


def with_metadata(meta: bytes) -> bytes:
    return b'{"inputs":[' + ROW + b'],"metadata":' + meta + b"}"


@pytest.mark.parametrize(("meta", "loc"), [
    (b'{"k":123456789012345678901234567890}', ["body", "metadata", "k"]),
    (b'{"k":-9223372036854775809}', ["body", "metadata", "k"]),
    (b'{"k":18446744073709551616}', ["body", "metadata", "k"]),
    (b'{"a":[1,{"b":[0,99999999999999999999999999]}]}', ["body", "metadata", "a", 1, "b", 1]),
    (b'{"k":NaN}', ["body", "metadata", "k"]),
    (b'{"k":[Infinity]}', ["body", "metadata", "k", 0]),
    (b'{"k":-Infinity}', ["body", "metadata", "k"]),
    (b'{"k":1e999}', ["body", "metadata", "k"]),
])
@pytest.mark.parametrize("route", ["jobs", "predict"])
async def test_metadata_that_cannot_be_stored_exactly_is_a_422_naming_where(
        api: Any, settings_env: dict[str, str], route: str, meta: bytes, loc: list[Any]
) -> None:
    async with api() as c:
        r = await c.post(f"/v1/models/iris/{route}", content=with_metadata(meta),
                         headers=JSON)
    body = assert_problem(r, 422)
    assert loc in [e["loc"] for e in body["errors"]], body
    assert queued(settings_env) == 0


async def test_64_bit_extremes_in_metadata_round_trip_exactly(api: Any) -> None:
    meta = (b'{"u64":18446744073709551615,"i64":-9223372036854775808,"f":1.7976931348623157e308,'
            b'"pair":"\\ud83d\\ude00","deep":[[[{"x":[]}]]]}')
    async with api() as c:
        r = await c.post("/v1/models/iris/jobs", content=with_metadata(meta), headers=JSON)
        assert r.status_code == 202, r.text
        job = (await c.get(f"/v1/jobs/{r.json()['id']}")).json()
    assert job["metadata"] == {"u64": 2**64 - 1, "i64": -(2**63), "f": 1.7976931348623157e308,
                               "pair": "\U0001f600", "deep": [[[{"x": []}]]]}


LONE = [b'"\\udb5a"', b'"x\\udb5ay"', b'"\\udc00"', b'"\\udb5a\\u0041"',
        b'"\xed\xad\x9a"']  # the last: the surrogate's own (CESU-8) bytes, not UTF-8


def _mixed_row_with(feature: str, raw: bytes) -> bytes:
    import orjson

    row = orjson.dumps(mixed_sample_rows(1)[0])
    marker = b"@@@"
    row = orjson.dumps({**orjson.loads(row), feature: "@@@"}).replace(b'"' + marker + b'"', raw)
    return b'{"inputs":[' + row + b"]}"


@pytest.mark.parametrize("raw", LONE, ids=range(len(LONE)))
async def test_lone_surrogates_anywhere_are_a_400_and_nothing_is_queued(
        api: Any, settings_env: dict[str, str], raw: bytes) -> None:
    string_feature = next(k for k, v in mixed_sample_rows(1)[0].items() if isinstance(v, str))
    bodies = {
        "metadata value": ("iris", with_metadata(b'{"k":' + raw + b"}")),
        "metadata key": ("iris", with_metadata(b"{" + raw + b":1}")),
        "string feature": ("mixed", _mixed_row_with(string_feature, raw)),
        "webhook url": ("iris", b'{"inputs":[' + ROW + b'],"webhook":{"url":'
                        + raw.replace(b'"', b'"https://example.com/', 1) + b"}}"),
        "version": ("iris", b'{"inputs":[' + ROW + b'],"version":' + raw + b"}"),
        "version, escaped key": ("iris", b'{"inputs":[' + ROW + b'],"\\u0076ersion":'
                                 + raw + b"}"),
    }
    async with api() as c:
        for where, (model, body) in bodies.items():
            r = await c.post(f"/v1/models/{model}/jobs", content=body, headers=JSON)
            assert r.status_code == 400, (where, r.status_code, r.text)
            assert_problem(r, 400)
    assert queued(settings_env) == 0


@pytest.fixture
def iris_v2(registry_with_models: Any) -> Any:
    """A second version of iris (the same estimator): ``production`` stays on 1."""
    m = registry_with_models.resolve("iris", "1")
    return push_model(registry_with_models, registry_with_models.artifact_path(m), "iris")


@pytest.mark.parametrize("key", [b'"\\u0076ersion"', b'"vers\\u0069on"',
                                 b'"\\u0076\\u0065\\u0072\\u0073\\u0069\\u006f\\u006e"'])
async def test_an_escaped_version_key_selects_that_version(api: Any, iris_v2: Any,
                                                          settings_env: dict[str, str],
                                                          key: bytes) -> None:
    assert iris_v2.version == "2"
    async with api() as c:
        r = await c.post("/v1/models/iris/jobs", content=b'{"inputs":[' + ROW + b"]," + key
                         + b':"999"}', headers=JSON)
        assert_problem(r, 404)  # was: accepted, and run on the default version
        assert queued(settings_env) == 0
        r = await c.post("/v1/models/iris/jobs", content=b'{"inputs":[' + ROW + b"]," + key
                         + b':"2"}', headers=JSON)
        assert r.status_code == 202, r.text
        assert r.json()["version"] == "2"
        assert (await c.get(f"/v1/jobs/{r.json()['id']}")).json()["version"] == "2"
        r = await c.post("/v1/models/iris/jobs", content=b'{"inputs":[' + ROW + b"]," + key
                         + b":2}", headers=JSON)
        assert assert_problem(r, 422)["errors"][0]["loc"] == ["body", "version"]


@pytest.mark.parametrize("length", ["\u00b2", "\u00b9", "1\u00b3"])
async def test_a_content_length_of_non_ascii_digits_is_not_a_500(api: Any, length: str
                                                                  ) -> None:
    """Superscript digits (latin-1, as ASGI headers are decoded) pass ``str.isdigit`` but
    not ``int``. uvicorn refuses them itself; the app must not depend on it (an ASGI call)."""
    async with api() as c:
        app = c._transport.app  # type: ignore[attr-defined]
        sent: list[dict[str, Any]] = []
        body = with_metadata(b"{}")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/models/iris/jobs",
                 "raw_path": b"/v1/models/iris/jobs", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"test"), (b"content-type", b"application/json"),
                             (b"content-length", length.encode("latin-1"))],
                 "client": ("127.0.0.1", 1), "server": ("test", 80), "state": {}}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert 200 <= status < 500, sent


# -- idempotency -------------------------------------------------------------------------------


async def test_an_idempotency_key_reused_on_another_model_is_a_409(
        api: Any, settings_env: dict[str, str]) -> None:
    key = {"Idempotency-Key": "cross-model-1"}
    async with api() as c:
        first = await c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)},
                             headers=key)
        assert first.status_code == 202, first.text
        # the same body to another model's URL (mixed would refuse iris rows anyway, so the
        # body here is one mixed accepts, under the same key)
        other = await c.post("/v1/models/mixed/jobs", json={"inputs": mixed_sample_rows(1)},
                             headers=key)
        body = assert_problem(other, 409)
        assert "'iris'" in body["detail"] and first.json()["id"] in body["detail"]
        assert "idempotent-replayed" not in other.headers
        # the same request again is still a replay of the first job
        again = await c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)},
                             headers=key)
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
    assert queued(settings_env) == 1


async def test_the_same_key_and_body_on_another_model_is_a_409_not_a_relabelled_replay(
        api: Any, registry_with_models: Any, settings_env: dict[str, str]) -> None:
    """Two models with the same features: the body is valid for both."""
    m = registry_with_models.resolve("iris", "1")
    push_model(registry_with_models, registry_with_models.artifact_path(m), "iris2")
    payload = {"inputs": iris_sample_rows(2)}
    key = {"Idempotency-Key": "cross-model-2"}
    async with api() as c:
        first = await c.post("/v1/models/iris/jobs", json=payload, headers=key)
        assert first.status_code == 202, first.text
        for route in ("jobs", "predict"):
            r = await c.post(f"/v1/models/iris2/{route}?wait=0", json=payload, headers=key)
            body = assert_problem(r, 409)  # was: the iris job, labelled iris2
            assert "'iris'" in body["detail"]
    assert queued(settings_env) == 1


async def test_a_replay_describes_the_stored_job(api: Any, iris_v2: Any,
                                                 registry_with_models: Any) -> None:
    payload = {"inputs": iris_sample_rows(3), "version": "production"}
    key = {"Idempotency-Key": "alias-moves"}
    async with api() as c:
        first = await c.post("/v1/models/iris/jobs", json=payload, headers=key)
        assert first.status_code == 202 and first.json()["version"] == "1", first.text
        registry_with_models.set_alias("iris", "production", "2")
        again = await c.post("/v1/models/iris/jobs", json=payload, headers=key)
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    got, want = again.json(), first.json()
    assert got == want  # the job as stored: version 1, 3 inputs, its own created_at


async def test_a_predict_replay_says_idempotent_replayed(api: Any, settings_env: dict[str, str]
                                                        ) -> None:
    payload = {"inputs": iris_sample_rows(1)}
    key = {"Idempotency-Key": "predict-1"}
    async with api() as c:
        first = await c.post("/v1/models/iris/predict?wait=0", json=payload, headers=key)
        assert first.status_code == 202, first.text  # no worker: still queued
        assert "idempotent-replayed" not in first.headers
        again = await c.post("/v1/models/iris/predict?wait=0", json=payload, headers=key)
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        # once the job ended (here: cancelled), the replay's problem says so too
        assert (await c.delete(f"/v1/jobs/{first.json()['id']}")).status_code == 200
        ended = await c.post("/v1/models/iris/predict?wait=0", json=payload, headers=key)
        assert_problem(ended, 409)
        assert ended.headers["idempotent-replayed"] == "true"
    assert redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"]).llen(
        settings_env["PREDQ_DEFAULT_QUEUE"]) == 1
