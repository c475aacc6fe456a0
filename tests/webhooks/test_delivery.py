"""The Deliverer without Celery: real Redis, a real receiver process, real HTTP on loopback."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import WEBHOOK_TASK
from predq.shared.jobstore.scripts import VIEW_FIELDS, decode_fields
from predq.shared.jobstore.views import job_json
from predq.shared.settings import Settings
from predq.shared.webhooks.state import DELIVERING, due_member, initial
from predq.worker.webhook_delivery import Deliverer, poison_webhook, webhook_for
from predq.worker.webhook_task import WebhookRunner
from tests.helpers.netguard import loopback_only
from tests.webhooks.conftest import ReceiverProc

OUTPUTS = [{"label": "setosa", "probabilities": {"setosa": 0.9, "versicolor": 0.1}}]


@pytest.fixture
def client(webhook_env: dict[str, str]) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(webhook_env["PREDQ_REDIS_URL"])
    yield c
    c.close()


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    with loopback_only(monkeypatch) as refused:
        yield refused


def settings(**over: Any) -> Settings:
    return Settings(**over)


def make_job(client: redis.Redis, url: str, *, status: str = "succeeded",
             events: tuple[str, ...] = ("job.completed", "job.failed")) -> str:
    """A finished job record, as the worker's FINISH script leaves it."""
    job_id = str(uuid.uuid4())
    s = settings()
    fields: dict[str, Any] = {
        "status": status, "model": "iris", "version": "1", "n_inputs": 1,
        "created_at": "2026-01-01T00:00:00.000000Z", "started_at": "2026-01-01T00:00:01.000000Z",
        "finished_at": "2026-01-01T00:00:02.000000Z", "owner": "user",
        "metadata": orjson.dumps({"k": 1}),
        "webhook": orjson.dumps({"url": url, "events": list(events)}),
    }
    if status == "succeeded":
        fields["outputs"] = orjson.dumps(OUTPUTS)
    else:
        fields["error"] = orjson.dumps({"type": "PredictError", "message": "boom"})
    key = Keys(s.key_prefix).job(job_id)
    client.hset(key, mapping=fields)
    client.expire(key, s.result_ttl_s)
    return job_id


def read(client: redis.Redis, job_id: str) -> dict[str, Any]:
    job = decode_fields(client.hmget(Keys(settings().key_prefix).job(job_id), VIEW_FIELDS))
    job["id"] = job_id
    return job


def test_delivered_signed_and_carrying_the_job_as_get_shows_it(
        client: redis.Redis, receiver: ReceiverProc, net: list[Any]) -> None:
    job_id = make_job(client, receiver.hook("ok"))
    assert Deliverer(client, settings()).deliver(job_id, "job.completed") == "delivered"
    [hit] = receiver.log()
    assert hit["verified"], hit["verify_error"]
    assert hit["host"] == receiver.base.removeprefix("http://")
    body = hit["body"]
    assert body["type"] == "job.completed"
    job = read(client, job_id)
    assert hit["headers"]["webhook-id"] == job["webhook_state"]["webhook_id"]
    shown = orjson.loads(job_json(job))
    for key in ("id", "status", "model", "version", "n_inputs", "created_at", "started_at",
                "finished_at", "error", "metadata", "links", "outputs"):
        assert body["data"][key] == shown[key], key
    assert body["data"]["outputs"] == OUTPUTS
    state = job["webhook_state"]
    assert state["state"] == "delivered" and len(state["attempts"]) == 1
    assert state["attempts"][0]["status_code"] == 200
    assert "signature" not in orjson.dumps(shown).decode()
    assert client.zcard(Keys(settings().key_prefix).webhook_due()) == 0
    assert net == []


def test_connects_to_the_checked_address_only(
        client: redis.Redis, receiver: ReceiverProc, net: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is resolved once, checked, and the connection goes to that
    address; a second resolution (by the HTTP client) would fail the delivery."""
    port = int(receiver.base.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "receiver.test":
            calls.append(host)
            if len(calls) > 1:
                raise AssertionError("receiver.test resolved twice: the answer could change")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    s = settings(webhook_allow_hosts=["127.0.0.0/8"])
    job_id = make_job(client, f"http://receiver.test:{port}/hook/ok")
    assert Deliverer(client, s, resolver=socket.getaddrinfo).deliver(
        job_id, "job.completed") == "delivered"
    [hit] = receiver.log()
    assert hit["host"] == f"receiver.test:{port}" and hit["verified"]
    assert calls == ["receiver.test"]


@pytest.mark.parametrize("addresses", [
    ["10.0.0.5"], ["172.16.0.1"], ["192.168.1.1"], ["169.254.169.254"], ["100.64.0.1"],
    ["127.0.0.1"], ["::1"], ["::ffff:127.0.0.1"], ["224.0.0.1"], ["0.0.0.0"],
    ["93.184.216.34", "10.1.2.3"],  # one bad address among good ones is enough
])
def test_refused_at_delivery_when_the_name_resolves_inward(
        client: redis.Redis, receiver: ReceiverProc, net: list[Any],
        addresses: list[str]) -> None:
    def resolver(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        assert host == "hooks.example.com"
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]

    s = settings(webhook_allow_hosts=[])  # the allow-list is off
    job_id = make_job(client, "https://hooks.example.com/hook")
    assert Deliverer(client, s, resolver=resolver).deliver(job_id, "job.completed") == "failed"
    state = read(client, job_id)["webhook_state"]
    assert state["state"] == "failed"
    [attempt] = state["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("BlockedAddress: hooks.example.com resolves to ")
    dead = Keys(s.key_prefix).webhook_dead()
    assert client.zscore(dead, job_id) is not None
    assert net == [] and receiver.log() == []


def test_redirects_are_not_followed(client: redis.Redis, receiver: ReceiverProc) -> None:
    job_id = make_job(client, receiver.hook("redirect"))
    assert Deliverer(client, settings()).deliver(job_id, "job.completed") == "failed"
    assert [h["path"] for h in receiver.log()] == ["/hook/redirect"]
    [attempt] = read(client, job_id)["webhook_state"]["attempts"]
    assert attempt["status_code"] == 302 and "not followed" in attempt["error"]


def test_response_body_is_read_up_to_the_cap(client: redis.Redis, receiver: ReceiverProc
                                             ) -> None:
    """An endless body ends the read at the cap, not at the timeout (20 s here)."""
    job_id = make_job(client, receiver.hook("endless"))
    s = settings(webhook_timeout_s=20)
    assert Deliverer(client, s).deliver(job_id, "job.completed") == "delivered"
    [attempt] = read(client, job_id)["webhook_state"]["attempts"]
    assert attempt["duration_ms"] < 10_000


def test_timeout_is_recorded_and_retried_then_dead(client: redis.Redis,
                                                   receiver: ReceiverProc) -> None:
    job_id = make_job(client, receiver.hook("hang"))
    s = settings(webhook_timeout_s=0.5, webhook_retry_schedule_s=[0, 0])
    d = Deliverer(client, s)
    assert d.deliver(job_id, "job.completed") == "retry"
    assert d.deliver(job_id, "job.completed") == "failed"
    state = read(client, job_id)["webhook_state"]
    assert [a["error"].split(":")[0] for a in state["attempts"]] == ["Timeout", "Timeout"]
    assert state["detail"] == "gave up after 2 attempts"


def test_without_a_secret_nothing_is_sent_unsigned(client: redis.Redis,
                                                   receiver: ReceiverProc) -> None:
    job_id = make_job(client, receiver.hook("ok"))
    s = settings(webhook_secrets=[])
    assert Deliverer(client, s).deliver(job_id, "job.completed") == "failed"
    assert receiver.log() == []
    [attempt] = read(client, job_id)["webhook_state"]["attempts"]
    assert attempt["error"].startswith("NotConfigured")


def test_duplicate_messages_make_one_attempt(client: redis.Redis, receiver: ReceiverProc
                                             ) -> None:
    job_id = make_job(client, receiver.hook("ok"))
    d = Deliverer(client, settings())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(d.deliver(job_id,
                                                                       "job.completed")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("delivered") == 1, results
    assert all(r.startswith("skipped") for r in results if r != "delivered")
    assert len(receiver.log()) == 1


def test_an_attempt_lost_with_its_worker_is_counted_and_retried(
        client: redis.Redis, receiver: ReceiverProc) -> None:
    job_id = make_job(client, receiver.hook("ok"))
    state = {**initial(job_id, "job.completed"), "state": DELIVERING, "tries": 1,
             "lease_until": time.time() - 1}
    client.hset(Keys(settings().key_prefix).job(job_id), "webhook_state", orjson.dumps(state))
    assert Deliverer(client, settings()).deliver(job_id, "job.completed") == "delivered"
    attempts = read(client, job_id)["webhook_state"]["attempts"]
    assert attempts[0]["error"].startswith("LostAttempt")
    assert attempts[1]["status_code"] == 200


def test_events_not_asked_for_are_not_sent(client: redis.Redis, receiver: ReceiverProc
                                           ) -> None:
    hook = webhook_for(settings())
    spec = orjson.dumps({"url": "https://x.example/", "events": ["job.failed"]})
    assert hook("j", "succeeded", spec) == ("", b"")
    queue, message = hook("j", "failed", spec)
    assert queue == settings().webhook_queue
    headers = orjson.loads(message)["headers"]
    assert headers["task"] == WEBHOOK_TASK and "['j', 'job.failed']" == headers["argsrepr"]
    job_id = make_job(client, receiver.hook("ok"), events=("job.failed",))
    result = Deliverer(client, settings()).deliver(job_id, "job.completed")
    assert result.startswith("skipped") and receiver.log() == []


def test_the_pump_publishes_each_due_delivery_once(client: redis.Redis,
                                                  webhook_env: dict[str, str]) -> None:
    s = settings()
    keys = Keys(s.key_prefix)
    now = time.time()
    client.zadd(keys.webhook_due(), {due_member("a", "job.completed"): now - 1,
                                     due_member("b", "job.failed"): now - 0.5,
                                     due_member("c", "job.completed"): now + 60})
    runners = [WebhookRunner(s), WebhookRunner(s)]
    published = [r.pump_once(now) for r in runners]
    assert sorted(published) == [0, 2]
    messages = [orjson.loads(m) for m in client.lrange(s.webhook_queue, 0, -1)]
    assert sorted(m["headers"]["argsrepr"] for m in messages) == [
        "['a', 'job.completed']", "['b', 'job.failed']"]
    # still tracked, now at the lease: a lost message is published again later
    assert client.zscore(keys.webhook_due(), due_member("a", "job.completed")) > now + 3
    for r in runners:
        r.deliverer().close()


def test_poison_jobs_send_job_failed(client: redis.Redis, receiver: ReceiverProc) -> None:
    s = settings()
    on_poison = poison_webhook(client, s)
    failed_only = make_job(client, receiver.hook("ok"), status="failed", events=("job.failed",))
    completed_only = make_job(client, receiver.hook("ok"), status="failed",
                              events=("job.completed",))
    on_poison(failed_only)
    on_poison(completed_only)
    on_poison(str(uuid.uuid4()))  # gone: nothing, and no error
    [message] = [orjson.loads(m) for m in client.lrange(s.webhook_queue, 0, -1)]
    assert message["headers"]["argsrepr"] == repr([failed_only, "job.failed"])
    assert Deliverer(client, s).deliver(failed_only, "job.failed") == "delivered"
    [hit] = receiver.log()
    assert hit["verified"] and hit["body"]["type"] == "job.failed"
    assert hit["body"]["data"]["error"] == {"type": "PredictError", "message": "boom"}
    assert "outputs" not in hit["body"]["data"]


def test_the_schedules_first_entry_delays_the_first_attempt(
        client: redis.Redis, receiver: ReceiverProc) -> None:
    """Entry i of PREDQ_WEBHOOK_RETRY_SCHEDULE_S is the delay before attempt i: entry 0 too."""
    job_id = make_job(client, receiver.hook("ok"))
    s = settings(webhook_retry_schedule_s=[30, 5])
    d = Deliverer(client, s)
    before = time.time()
    assert d.deliver(job_id, "job.completed") == "deferred"
    assert receiver.log() == []  # nothing sent yet
    state = read(client, job_id)["webhook_state"]
    assert state["state"] == "pending" and state["attempts"] == []
    assert before + 30 * 0.8 <= state["next_at"] <= time.time() + 30 * 1.2
    due = client.zscore(Keys(s.key_prefix).webhook_due(), due_member(job_id, "job.completed"))
    assert due == pytest.approx(state["next_at"])  # the pump publishes it when due
    # a duplicate of the first message does not attempt early
    assert d.deliver(job_id, "job.completed").startswith("skipped")
    # once due, the first attempt is made
    raw = client.hget(Keys(s.key_prefix).job(job_id), "webhook_state")
    client.hset(Keys(s.key_prefix).job(job_id), "webhook_state",
                orjson.dumps({**orjson.loads(raw), "next_at": time.time() - 1}))
    assert d.deliver(job_id, "job.completed") == "delivered"
    assert len(receiver.log()) == 1


def test_a_zero_first_entry_sends_at_once(client: redis.Redis, receiver: ReceiverProc) -> None:
    job_id = make_job(client, receiver.hook("ok"))
    assert Deliverer(client, settings(webhook_retry_schedule_s=[0, 5])).deliver(
        job_id, "job.completed") == "delivered"


def test_retries_due_after_the_job_expires_are_dropped_and_said(
        client: redis.Redis, receiver: ReceiverProc) -> None:
    job_id = make_job(client, receiver.hook("fail"))  # the receiver answers 500
    client.expire(Keys(settings().key_prefix).job(job_id), 100)  # the job expires in 100 s
    s = settings(webhook_retry_schedule_s=[0, 1, 3600, 7200])
    d = Deliverer(client, s)
    assert d.deliver(job_id, "job.completed") == "retry"  # next one in ~1 s: inside the TTL
    raw = client.hget(Keys(s.key_prefix).job(job_id), "webhook_state")
    client.hset(Keys(s.key_prefix).job(job_id), "webhook_state",
                orjson.dumps({**orjson.loads(raw), "next_at": time.time() - 1}))
    assert d.deliver(job_id, "job.completed") == "failed"  # the next would be after expiry
    state = read(client, job_id)["webhook_state"]
    assert state["state"] == "failed" and len(state["attempts"]) == 2
    assert "after the job expires" in state["detail"] and "2 later attempt" in state["detail"]
    assert client.zscore(Keys(s.key_prefix).webhook_dead(), job_id) is not None
