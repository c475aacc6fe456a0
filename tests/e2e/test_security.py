"""Authentication, scopes, ownership and secrecy of keys, through a real uvicorn process.

What API.md and issue 5 promise: the key is checked before the body is read (an anonymous
50 MB body is refused while it is still being sent), scopes gate every route, another key's
job is a 404 indistinguishable from a missing one, and no plaintext key ever reaches the
settings, the logs or Redis.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from predq.api.security.apikeys import key_spec, new_key
from predq.demo import iris_sample_rows
from predq.shared.settings import Settings
from tests.helpers.rawhttp import stream_request, zero_chunks

pytestmark = pytest.mark.integration

FIFTY_MB = 50 * 1024 * 1024
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def scoped(keys: dict[str, str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
           ) -> dict[str, str]:
    """The e2e keys plus ``reader`` (models:read only) and ``jobs`` (jobs:* only)."""
    plain = {**keys, "reader": new_key(), "jobs": new_key()}
    specs = orjson.loads(env["PREDQ_API_KEYS"])
    specs += [key_spec("reader", plain["reader"], ("models:read",)).model_dump(mode="json"),
              key_spec("jobs", plain["jobs"], ("jobs:write", "jobs:read")).model_dump(mode="json")]
    env["PREDQ_API_KEYS"] = orjson.dumps(specs).decode()
    monkeypatch.setenv("PREDQ_API_KEYS", env["PREDQ_API_KEYS"])
    return plain


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_anonymous_50mb_body_gets_401_before_it_is_sent(
        start_api: Any, scoped: dict[str, str], registry_with_models: Any, framing: str) -> None:
    base = start_api()
    length = FIFTY_MB if framing == "content-length" else None
    answer = stream_request(base, "POST", "/v1/models/iris/jobs", JSON, zero_chunks(FIFTY_MB),
                            content_length=length)
    assert answer.status == 401, answer.body[:300]
    assert answer.headers["content-type"] == "application/problem+json"
    # The answer came while the client was still producing the body: most of it never left.
    assert not answer.body_finished
    assert answer.bytes_sent < FIFTY_MB // 4, answer.bytes_sent
    # The same server still serves the next request.
    with httpx.Client(base_url=base, headers=bearer(scoped["user"]), timeout=30) as c:
        assert c.get("/v1/models").status_code == 200


def test_wrong_scope_is_refused_before_the_body_too(
        start_api: Any, scoped: dict[str, str], registry_with_models: Any) -> None:
    base = start_api()
    answer = stream_request(base, "POST", "/v1/models/iris/jobs",
                            {**JSON, **bearer(scoped["reader"])}, zero_chunks(FIFTY_MB))
    assert answer.status == 403 and not answer.body_finished
    assert answer.bytes_sent < FIFTY_MB // 4


def test_an_authenticated_oversized_body_is_cut_at_the_limit(
        start_api: Any, scoped: dict[str, str], registry_with_models: Any) -> None:
    base = start_api(extra_env={"PREDQ_MAX_BODY_BYTES": str(1024 * 1024)})
    answer = stream_request(base, "POST", "/v1/models/iris/jobs",
                            {**JSON, **bearer(scoped["user"])}, zero_chunks(FIFTY_MB))
    assert answer.status == 413 and not answer.body_finished
    assert answer.bytes_sent < FIFTY_MB // 4


def test_scopes_gate_every_route(start_api: Any, scoped: dict[str, str],
                                 registry_with_models: Any) -> None:
    base = start_api()
    body = {"inputs": iris_sample_rows(1)}
    with httpx.Client(base_url=base, timeout=30) as c:
        job_id = c.post("/v1/models/iris/jobs", json=body,
                        headers=bearer(scoped["user"])).json()["id"]
        reader, jobs, admin = (bearer(scoped[k]) for k in ("reader", "jobs", "admin"))
        # models:read only: may list and describe models, nothing else.
        assert c.get("/v1/models", headers=reader).status_code == 200
        assert c.get("/v1/models/iris", headers=reader).status_code == 200
        for method, path in [("POST", "/v1/models/iris/jobs"), ("POST", "/v1/models/iris/predict")]:
            r = c.request(method, path, json=body, headers=reader)
            assert "jobs:write" in assert_problem(r, 403)["detail"]
        assert_problem(c.get(f"/v1/jobs/{job_id}", headers=reader), 403)
        assert_problem(c.delete(f"/v1/jobs/{job_id}", headers=reader), 403)
        # jobs:* only: jobs yes, models and admin routes no.
        assert c.post("/v1/models/iris/jobs", json=body, headers=jobs).status_code == 202
        assert_problem(c.get("/v1/models", headers=jobs), 403)
        assert_problem(c.get("/v1/stats/batches", headers=jobs), 403)
        assert_problem(c.get("/v1/webhooks/dead", headers=jobs), 403)
        assert_problem(c.post(f"/v1/jobs/{job_id}/webhook/redeliver", headers=jobs), 403)
        # The user key (jobs + models) is no admin either; the admin key is.
        assert_problem(c.get("/v1/webhooks/dead", headers=bearer(scoped["user"])), 403)
        assert c.get("/v1/webhooks/dead", headers=admin).status_code == 200
        # No key, a wrong scheme, or an unknown key: 401, whatever the route.
        for headers in ({}, {"Authorization": f"Basic {scoped['user']}"},
                        bearer("pq_" + "x" * 43), bearer(scoped["user"] + "x")):
            for method, path in [("GET", "/v1/models"), ("GET", f"/v1/jobs/{job_id}"),
                                 ("POST", "/v1/models/iris/jobs"),
                                 ("GET", "/v1/webhooks/dead")]:
                assert_problem(c.request(method, path, headers=headers), 401)


def test_another_keys_job_is_indistinguishable_from_a_missing_one(
        start_api: Any, scoped: dict[str, str], registry_with_models: Any) -> None:
    base = start_api()
    with httpx.Client(base_url=base, timeout=30) as c:
        mine = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)},
                      headers={**bearer(scoped["user"]), "Idempotency-Key": "k1"}).json()["id"]
        missing = str(uuid.uuid4())
        other = bearer(scoped["other"])
        for method in ("GET", "DELETE"):
            theirs = assert_problem(c.request(method, f"/v1/jobs/{mine}", headers=other), 404)
            absent = assert_problem(c.request(method, f"/v1/jobs/{missing}", headers=other), 404)
            # Same title and the same detail but for the id: nothing tells "exists" apart.
            assert theirs["title"] == absent["title"]
            assert theirs["detail"].replace(mine, "ID") == absent["detail"].replace(missing, "ID")
        # The same Idempotency-Key under another key is another job, not the first one.
        again = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(1)},
                       headers={**other, "Idempotency-Key": "k1"})
        assert again.status_code == 202 and again.json()["id"] != mine
        assert "idempotent-replayed" not in again.headers
        # The owner still sees and controls it.
        assert c.get(f"/v1/jobs/{mine}", headers=bearer(scoped["user"])).status_code == 200


def test_no_plaintext_key_in_settings_logs_or_redis(
        stack: Any, scoped: dict[str, str], settings_env: dict[str, str], env: dict[str, str],
        tmp_path: Path) -> None:
    s = stack(PREDQ_LOG_LEVEL="DEBUG")
    unknown = new_key()
    with httpx.Client(base_url=s.base_url, timeout=30) as c:
        for name in ("user", "other", "reader", "jobs", "admin"):
            c.get("/v1/models", headers=bearer(scoped[name]))
        job = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(2)},
                     headers=bearer(scoped["user"])).json()
        done = c.get(f"/v1/jobs/{job['id']}", params={"wait": 20}, headers=bearer(scoped["user"]))
        assert done.json()["status"] == "succeeded"
        c.get("/v1/models", headers=bearer(unknown))  # a 401: still never logged
        c.post("/v1/models/iris/jobs", content=b"{", headers={**JSON, **bearer(scoped["user"])})
    secrets = [*scoped.values(), unknown]
    # The configuration holds hashes only.
    configured = env["PREDQ_API_KEYS"] + Settings().model_dump_json()
    assert not [k for k in secrets if k in configured]
    # Every line every process logged (api, worker: DEBUG).
    logs = b"".join(p.read_bytes() for p in (tmp_path / "logs").glob("*.log"))
    assert logs, "the processes logged nothing"
    assert not [k for k in secrets if k.encode() in logs]
    # Everything the test's deployment stored in Redis.
    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    stored = b"".join(_dump(client, key) for key in client.scan_iter(count=1000))
    assert stored and not [k for k in secrets if k.encode() in stored]


def _dump(client: redis.Redis, key: bytes) -> bytes:
    kind = client.type(key)
    if kind == b"string":
        return key + (client.get(key) or b"")
    if kind == b"hash":
        return key + b"".join(k + v for k, v in client.hgetall(key).items())
    if kind == b"list":
        return key + b"".join(client.lrange(key, 0, -1))
    if kind == b"set":
        return key + b"".join(client.smembers(key))
    if kind == b"zset":
        return key + b"".join(m for m, _ in client.zrange(key, 0, -1, withscores=True))
    return key
