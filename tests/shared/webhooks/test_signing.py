"""Standard Webhooks signing: the ``standardwebhooks`` package verifies our headers unchanged."""

from __future__ import annotations

import base64
import secrets
import time

import orjson
import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from predq.shared.settings import Settings
from predq.shared.webhooks.signing import headers, payload, sign, webhook_id


def new_secret(n: int = 32) -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(n)).decode()


BODY = b'{"type":"job.completed","timestamp":"2026-01-01T00:00:00.000000Z","data":{}}'


def test_one_secret_verifies_with_the_reference_library() -> None:
    secret = new_secret()
    now = int(time.time())
    h = headers([secret], "msg_1", now, BODY)
    assert Webhook(secret).verify(BODY, h) == orjson.loads(BODY)
    assert h["webhook-id"] == "msg_1" and h["webhook-timestamp"] == str(now)
    assert h["webhook-signature"].startswith("v1,")
    # and the signature is exactly the reference one
    from datetime import UTC, datetime
    ref = Webhook(secret).sign("msg_1", datetime.fromtimestamp(now, UTC), BODY.decode())
    assert h["webhook-signature"] == ref


def test_rotation_signs_with_every_secret_and_either_verifies() -> None:
    old, new = new_secret(24), new_secret(64)
    h = headers([old, new], "msg_2", int(time.time()), BODY)
    sigs = h["webhook-signature"].split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)
    for secret in (old, new):
        Webhook(secret).verify(BODY, h)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, h)


def test_tampering_fails_verification() -> None:
    secret = new_secret()
    h = headers([secret], "msg_3", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"completed", b"failed"), h)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**h, "webhook-id": "msg_other"})
    stale = headers([secret], "msg_3", int(time.time()) - 3600, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, stale)


def test_never_unsigned() -> None:
    with pytest.raises(ValueError, match="no webhook secret"):
        sign([], "msg", 1, BODY)


def test_webhook_id_is_stable_per_job_and_event() -> None:
    job = "8eee5320-1f83-442d-b857-81b5476c3612"
    assert webhook_id(job, "job.completed") == webhook_id(job, "job.completed")
    assert webhook_id(job, "job.completed") != webhook_id(job, "job.failed")
    assert webhook_id(job, "job.completed").startswith("msg_")


def test_payload_splices_the_job_json_unparsed() -> None:
    job = b'{"id":"j","status":"succeeded","outputs":[{"value":1.5}]}'
    body = payload("job.completed", 0.0, job)
    assert orjson.loads(body) == {"type": "job.completed",
                                  "timestamp": "1970-01-01T00:00:00.000000Z",
                                  "data": orjson.loads(job)}


@pytest.mark.parametrize("bad", ["abc", "whsec_not-base64!", "whsec_" + "A" * 8,
                                 "whsec_" + base64.b64encode(b"\0" * 32).decode()])
def test_settings_refuse_bad_or_placeholder_secrets(bad: str) -> None:
    with pytest.raises(ValidationError):
        Settings(webhook_secrets=[bad])


def test_settings_parse_comma_separated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = new_secret(), new_secret()
    monkeypatch.setenv("PREDQ_WEBHOOK_SECRETS", f"{a}, {b}")
    monkeypatch.setenv("PREDQ_WEBHOOK_RETRY_SCHEDULE_S", "0,1.5,60")
    s = Settings()
    assert s.webhook_secrets == [a, b] and s.webhook_retry_schedule_s == [0, 1.5, 60]
    monkeypatch.setenv("PREDQ_WEBHOOK_RETRY_SCHEDULE_S", "-1")
    with pytest.raises(ValidationError):
        Settings()


async def test_the_verification_example_in_the_docs_works() -> None:
    """README.md's webhook receiver example accepts our requests once, refuses forgeries."""
    from pathlib import Path

    import httpx

    doc = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    code = doc.split("### Verifying a request", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0]
    secret = new_secret()
    handled: list[tuple[str, object]] = []
    namespace: dict[str, object] = {"handle": lambda t, d: handled.append((t, d))}
    exec(compile(code.replace("whsec_...", secret), "README.md", "exec"), namespace)
    body = payload("job.completed", time.time(), b'{"id":"j","outputs":[{"value":1.0}]}')
    h = headers([new_secret(), secret], webhook_id("j", "job.completed"), int(time.time()), body)
    transport = httpx.ASGITransport(app=namespace["app"])  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        assert (await client.post("/predq", content=body, headers=h)).status_code == 204
        retry = await client.post("/predq", content=body, headers=h)
        assert retry.status_code == 204
        forged = {**h, "webhook-signature": headers([new_secret()], "x", 1, body)[
            "webhook-signature"]}
        assert (await client.post("/predq", content=body, headers=forged)).status_code == 400
    assert handled == [("job.completed", {"id": "j", "outputs": [{"value": 1.0}]})]
