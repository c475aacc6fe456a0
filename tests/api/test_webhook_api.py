"""The API's side of webhooks: input checks at submit, the admin routes, the OpenAPI schemas."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import httpx
import pytest
import redis

from predq.demo import iris_sample_rows

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def job_body(webhook: Any) -> dict[str, Any]:
    return {"inputs": iris_sample_rows(1), "webhook": webhook}


def queued(settings_env: dict[str, str]) -> int:
    client = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    try:
        return int(client.llen(settings_env["PREDQ_DEFAULT_QUEUE"]))
    finally:
        client.close()


def problem(r: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return dict(r.json())


BAD = [
    ("not a URL", {"url": "not a url"}, ["body", "webhook", "url"]),
    ("no scheme", {"url": "hooks.example.com/x"}, ["body", "webhook", "url"]),
    ("ftp", {"url": "ftp://hooks.example.com/x"}, ["body", "webhook", "url"]),
    ("file", {"url": "file:///etc/passwd"}, ["body", "webhook", "url"]),
    ("too long", {"url": "https://hooks.example.com/" + "a" * 2048},
     ["body", "webhook", "url"]),
    ("unknown event", {"url": "https://hooks.example.com/", "events": ["job.exploded"]},
     ["body", "webhook", "events", 0]),
    ("job.started is not offered", {"url": "https://hooks.example.com/",
                                    "events": ["job.started"]}, ["body", "webhook", "events", 0]),
    ("no events", {"url": "https://hooks.example.com/", "events": []},
     ["body", "webhook", "events"]),
    ("extra key", {"url": "https://hooks.example.com/", "secret": "x"},
     ["body", "webhook", "secret"]),
    ("not an object", "https://hooks.example.com/", ["body", "webhook"]),
    ("loopback", {"url": "http://127.0.0.1:8080/"}, ["body", "webhook", "url"]),
    ("localhost", {"url": "http://localhost/"}, ["body", "webhook", "url"]),
    ("metadata", {"url": "http://169.254.169.254/latest/meta-data/"},
     ["body", "webhook", "url"]),
    ("private", {"url": "http://10.0.0.1/"}, ["body", "webhook", "url"]),
    ("cgnat", {"url": "http://100.64.0.1/"}, ["body", "webhook", "url"]),
    ("mapped v6", {"url": "http://[::ffff:127.0.0.1]/"}, ["body", "webhook", "url"]),
]


@pytest.mark.parametrize(("case", "webhook", "loc"), BAD, ids=[b[0] for b in BAD])
async def test_bad_webhooks_get_422_and_nothing_is_enqueued(
        api: Any, settings_env: dict[str, str], case: str, webhook: Any, loc: list[Any]
) -> None:
    async with api(webhook_secrets=[SECRET]) as c:
        r = await c.post("/v1/models/iris/jobs", json=job_body(webhook))
    body = problem(r)
    assert loc in [e["loc"] for e in body["errors"]], body
    assert queued(settings_env) == 0


async def test_webhooks_are_refused_without_a_signing_secret(
        api: Any, settings_env: dict[str, str]) -> None:
    async with api(webhook_secrets=[]) as c:
        r = await c.post("/v1/models/iris/jobs",
                         json=job_body({"url": "https://hooks.example.com/"}))
        assert (await c.post("/v1/models/iris/jobs",
                             json={"inputs": iris_sample_rows(1)})).status_code == 202
    body = problem(r)
    assert body["errors"][0]["loc"] == ["body", "webhook"]
    assert "PREDQ_WEBHOOK_SECRETS" in body["detail"]


async def test_a_good_webhook_is_accepted_without_resolving_it(
        api: Any, settings_env: dict[str, str]) -> None:
    async with api(webhook_secrets=[SECRET]) as c:
        r = await c.post("/v1/models/iris/jobs", json=job_body(
            {"url": "https://hooks.example.com/predq", "events": ["job.failed"]}))
        assert r.status_code == 202, r.text
        job = (await c.get(f"/v1/jobs/{r.json()['id']}")).json()
    assert job["webhook"] == {"url": "https://hooks.example.com/predq",
                              "events": ["job.failed"], "state": "pending", "attempts": []}
    assert queued(settings_env) == 1


async def test_admin_routes_answer_conflicts_clearly(api: Any) -> None:
    async with api(webhook_secrets=[SECRET]) as c:
        plain = (await c.post("/v1/models/iris/jobs",
                              json={"inputs": iris_sample_rows(1)})).json()["id"]
        hooked = (await c.post("/v1/models/iris/jobs", json=job_body(
            {"url": "https://hooks.example.com/"}))).json()["id"]
        r = await c.post(f"/v1/jobs/{plain}/webhook/redeliver")
        assert "has no webhook" in problem(r, 409)["detail"]
        r = await c.post(f"/v1/jobs/{hooked}/webhook/redeliver")  # still queued
        assert "sends no webhook event" in problem(r, 409)["detail"]
        problem(await c.post("/v1/jobs/nope/webhook/redeliver"), 404)
        dead = await c.get("/v1/webhooks/dead", params={"limit": 10})
        assert dead.status_code == 200 and dead.json() == {"total": 0, "items": []}
        problem(await c.get("/v1/webhooks/dead", params={"offset": 10**20}), 422)
        problem(await c.get("/v1/webhooks/dead", params={"limit": 0}), 422)


async def test_admin_routes_need_the_admin_scope(api: Any) -> None:
    from predq.api.security.apikeys import key_spec, new_key

    key = new_key()
    user = key_spec("user", key, ("jobs:write", "jobs:read", "models:read"))
    async with api(webhook_secrets=[SECRET], auth_enabled=True, api_keys=[user]) as c:
        auth = {"Authorization": f"Bearer {key}"}
        problem(await c.get("/v1/webhooks/dead", headers=auth), 403)
        problem(await c.post("/v1/jobs/x/webhook/redeliver", headers=auth), 403)
        problem(await c.get("/v1/webhooks/dead"), 401)


async def test_the_openapi_document_types_the_webhook_payload(api: Any) -> None:
    async with api(webhook_secrets=[SECRET]) as c:
        doc = (await c.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert {"Job", "WebhookEvent", "WebhookView", "WebhookAttempt"} <= set(schemas)
    event = schemas["WebhookEvent"]
    assert event["properties"]["data"]["$ref"] == "#/components/schemas/Job"
    assert event["properties"]["type"]["enum"] == ["job.completed", "job.failed"]
    assert set(doc["webhooks"]) == {"job.completed", "job.failed"}
    op = doc["webhooks"]["job.completed"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/WebhookEvent"
    assert {p["name"] for p in op["parameters"]} == {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert "/v1/jobs/{job_id}/webhook/redeliver" in doc["paths"]
    assert schemas["WebhookSpec"]["properties"]["url"]["maxLength"] == 2048
