"""Messages for common mistakes, over the real app in-process (issue "The first hour")."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from predq.api.security.apikeys import key_spec
from predq.demo import iris_sample_rows

pytestmark = pytest.mark.integration

READER, WRITER, ADMIN = "pq_reader" + "r" * 30, "pq_writer" + "w" * 30, "pq_admin" + "a" * 30
KEYS = [key_spec("reader", READER, ("models:read", "jobs:write", "jobs:read")),
        key_spec("writer", WRITER, ("jobs:write", "jobs:read")),
        key_spec("boss", ADMIN, ("admin",))]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("header", "expected"), [
    (None, "missing API key: send 'Authorization: Bearer <key>'"),
    (READER, "the Authorization header holds an API key without the 'Bearer' scheme"),
    ("Basic dXNlcjpwYXNz", "the Authorization scheme 'Basic' is not supported"),
    ("Bearer", "the Authorization header says Bearer but holds no key"),
    ("token", "holds a single word without the 'Bearer' scheme"),
])
async def test_a_bad_authorization_header_says_what_is_wrong(
        api: Any, header: str | None, expected: str) -> None:
    async with api(auth_enabled=True, api_keys=KEYS) as c:
        r = await c.get("/v1/models", headers={"Authorization": header} if header else {})
    assert r.status_code == 401
    assert expected in r.json()["detail"]
    assert "dXNlcjpwYXNz" not in r.text and "rrrrrrrr" not in r.text  # never echoed


async def test_an_unknown_model_lists_the_models_to_keys_that_may_read_them(
        api: Any, registry_with_models: Any) -> None:
    body = {"inputs": iris_sample_rows(1)}
    root = str(registry_with_models.root)
    async with api(auth_enabled=True, api_keys=KEYS) as c:
        reader = await c.get("/v1/models/churn", headers=bearer(READER))
        submit = await c.post("/v1/models/churn/jobs", json=body, headers=bearer(READER))
        writer = await c.post("/v1/models/churn/jobs", json=body, headers=bearer(WRITER))
        admin = await c.post("/v1/models/churn/predict", json=body, headers=bearer(ADMIN))
    for r in (reader, submit):
        assert r.status_code == 404
        assert r.json()["detail"] == "model 'churn' is not registered; registered models: " \
                                     "iris, mixed"
        assert root not in r.text  # no server path for a non-admin key
    assert writer.status_code == 404  # no models:read: the names are not its to see
    assert writer.json()["detail"] == "model 'churn' is not registered"
    assert admin.status_code == 404
    assert admin.json()["detail"] == (f"model 'churn' is not registered; registered models: "
                                      f"iris, mixed (registry {root})")


async def test_too_many_rows_over_http_names_the_setting(api: Any) -> None:
    async with api(max_rows_per_job=2) as c:
        r = await c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(3)})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "PREDQ_MAX_ROWS_PER_JOB" in detail and "/v1/models/iris/batches" in detail


async def test_docs_and_openapi_are_not_labelled_unmatched(api: Any) -> None:
    async with api() as c:
        assert (await c.get("/docs")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200
        assert (await c.get("/nowhere")).status_code == 404
        text = (await c.get("/metrics", params={"scope": "process"})).text
    counts = {(s.labels["route"], s.labels["status"]): s.value
              for fam in text_string_to_metric_families(text) for s in fam.samples
              if s.name == "predq_http_requests_total"}
    assert counts[("/docs", "200")] == 1
    assert counts[("/openapi.json", "200")] == 1
    assert counts[("unmatched", "404")] == 1
    assert not any(route == "unmatched" and status != "404" for route, status in counts)


SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


async def test_a_localhost_webhook_is_accepted_once_127_0_0_1_is_allowed(api: Any) -> None:
    body = {"inputs": iris_sample_rows(1), "webhook": {"url": "http://localhost:9/hook"}}
    async with api(webhook_secrets=[SECRET]) as c:
        refused = await c.post("/v1/models/iris/jobs", json=body)
    assert refused.status_code == 422
    assert "PREDQ_WEBHOOK_ALLOW_HOSTS" in refused.json()["detail"]
    async with api(webhook_secrets=[SECRET], webhook_allow_hosts=["127.0.0.1"]) as c:
        accepted = await c.post("/v1/models/iris/jobs", json=body)
    assert accepted.status_code == 202, accepted.text
