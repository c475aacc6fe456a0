"""Webhook delivery: one signed, SSRF-checked attempt per call, its outcome recorded.

Framework-free and thread-safe: :class:`Deliverer` takes a job id and an event, and talks
to Redis and the receiver; it knows nothing of Celery (``predq.worker.webhook_task`` wires it to the
``predq.webhook`` task). Each call makes at most one HTTP attempt and leaves the job's
webhook state consistent: delivered, failed (and dead-lettered), or pending with its next
attempt scheduled in ``webhook_due``. A receiver's failure is recorded and logged, never
raised; only Redis errors propagate (the caller requeues the message).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from predq.shared.batchfiles import batchstore as bstore
from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import webhook_message
from predq.shared.jobstore.scripts import VIEW_FIELDS, decode_fields
from predq.shared.jobstore.views import job_json
from predq.shared.observability.metrics import record_webhook
from predq.shared.redis_conn import SyncRedis
from predq.shared.settings import Settings
from predq.shared.webhooks.signing import (
    Outcome,
    event_for,
    headers,
    next_delay,
    parse_retry_after,
    payload,
)
from predq.shared.webhooks.ssrf import (
    AllowList,
    BlockedAddress,
    Resolver,
    Target,
    UnsafeUrl,
    resolve,
)
from predq.shared.webhooks.state import WebhookStore, begin, due_member, record

log = logging.getLogger("predq.worker.webhooks")

#: An attempt's lease is its timeout plus this: a worker that died mid-attempt is noticed
#: (and the attempt counted as lost) after it runs out.
LEASE_MARGIN_S = 60.0
#: Tries of the compare-and-set when another message for the same job races this one.
_CAS_TRIES = 5
_STATE_INDEX = VIEW_FIELDS.index("webhook_state")


def http_client(settings: Settings) -> httpx.Client:
    """The client of deliveries: no redirects, no proxies from the environment, and no
    kept-alive connections (a connection is pinned to one checked address and TLS name)."""
    return httpx.Client(
        timeout=httpx.Timeout(settings.webhook_timeout_s),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=max(100, settings.webhook_concurrency * 2),
                            max_keepalive_connections=0),
    )


def webhook_for(settings: Settings) -> Callable[[str, str, bytes], tuple[str, bytes]]:
    """The BatchPredictor hook: the webhook message a finished job's FINISH script pushes.

    Returns ``(queue, message)`` when the job's webhook asks for the event its status
    sends, else ``("", b"")``.
    """
    queue = settings.webhook_queue

    def hook(job_id: str, status: str, webhook: bytes) -> tuple[str, bytes]:
        event = event_for(status)
        try:
            events = orjson.loads(webhook)["events"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("job %s has an unreadable webhook spec; none sent", job_id)
            return "", b""
        if event is None or event not in events:
            return "", b""
        return queue, webhook_message(job_id, event, queue)

    return hook


def poison_webhook(client: SyncRedis, settings: Settings) -> Callable[[str], None]:
    """The BatchPredictor ``on_poison`` hook: push the job.failed webhook of a job that the
    claim failed as poison, when its webhook asks for it.

    Best effort, and so not atomic with the claim: a worker dying in between loses this
    one message (an operator can still redeliver it). Errors are logged, never raised.
    """
    keys = Keys(settings.key_prefix)
    hook = webhook_for(settings)

    def on_poison(job_id: str) -> None:
        try:
            spec: bytes | None = client.hget(keys.job(job_id), "webhook")  # type: ignore[assignment]
            if spec:
                queue, message = hook(job_id, "failed", spec)
                if queue:
                    client.lpush(queue, message)
        except Exception:
            log.warning("job.failed webhook of poison job %s not queued", job_id,
                        exc_info=True)

    return on_poison


class Deliverer:
    """Makes webhook attempts (see the module docstring). One instance serves all threads."""

    def __init__(self, client: SyncRedis, settings: Settings, *, http: httpx.Client | None = None,
                 resolver: Resolver = socket.getaddrinfo, rng: random.Random | None = None
                 ) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.store = WebhookStore(client, self.keys, settings.webhook_queue)
        self.allow = AllowList.parse(settings.webhook_allow_hosts)
        self.http = http or http_client(settings)
        self.resolver = resolver
        self.rng = rng
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S

    def close(self) -> None:
        self.http.close()

    def deliver(self, job_id: str, event: str) -> str:
        """One attempt for (job, event), if one is due. Returns what happened, for logs and
        tests: ``delivered``, ``retry``, ``failed``, ``deferred`` (the first attempt waits for
        the schedule's first entry), or ``skipped: <why>``."""
        schedule = self.settings.webhook_retry_schedule_s
        for _ in range(_CAS_TRIES):
            job, raw_state = self._read(job_id)
            if job is None:
                self.client.zrem(self.keys.webhook_due(), due_member(job_id, event))
                return "skipped: the job no longer exists"
            spec = job.get("webhook") or {}
            sends = (bstore.EVENT_FOR_STATUS.get(job["status"]) if bstore.is_batch_id(job_id)
                     else event_for(job["status"]))
            if sends != event or event not in spec.get("events", ()):
                self.client.zrem(self.keys.webhook_due(), due_member(job_id, event))
                return f"skipped: a {job['status']} job does not send {event}"
            now = time.time()
            # The schedule's first entry is the delay before the first attempt.
            first = next_delay(0, schedule, None, self.rng) if raw_state is None else 0.0
            state, why = begin(job["webhook_state"], job_id, event, now, self.lease_s, schedule,
                               first_delay=first or 0.0)
            if state is None:
                return f"skipped: {why}"
            if why == "deferred":
                written = self.store.cas(job_id, event, raw_state, state, due=state["next_at"],
                                         dead="keep", now=now)
                if written == -1:
                    return "skipped: the job no longer exists"
                if written == 1:
                    return "deferred"
                continue
            dead = why == "dead"
            due = None if dead else state["lease_until"]
            written = self.store.cas(job_id, event, raw_state, state, due=due,
                                     dead="add" if dead else "keep", now=now)
            if written == -1:
                return "skipped: the job no longer exists"
            if written == 1:
                break
        else:
            return "skipped: the state kept changing under this attempt"
        if dead:
            log.warning("webhook of job %s failed: %s", job_id, state["detail"])
            return "failed"
        job["webhook_state"] = state
        at = time.time()
        outcome = self.attempt(job, state["webhook_id"], event, at)
        now = time.time()
        expires_at = at + job["expires_in"] if job.get("expires_in") else None
        final, due, dead = record(state, outcome, at, now, schedule, self.rng, expires_at)
        written = self.store.cas(job_id, event, orjson.dumps(state), final, due=due,
                                 dead="add" if dead else "rem", now=now)
        if written != 1:
            log.warning("webhook of job %s: state changed during the attempt; outcome %s "
                        "not recorded", job_id, outcome.verdict)
        result = {"delivered": "delivered", "retry": "retry"}.get(outcome.verdict, "failed")
        if dead and outcome.verdict == "retry":
            result = "failed"
        record_webhook(self.client, self.keys, result, outcome.duration_ms / 1000)
        level = logging.INFO if result == "delivered" else logging.WARNING
        log.log(level, "webhook %s of job %s attempt %d: %s (%s)", event, job_id,
                 final["n_attempts"], outcome.status_code or outcome.error, result)
        return result

    def _read(self, job_id: str) -> tuple[dict[str, Any] | None, bytes | None]:
        """The job (or batch) as GET reads it, and the raw bytes of its webhook state."""
        if bstore.is_batch_id(job_id):
            b = bstore.read_sync(self.client, self.keys, job_id)
            raw = self.client.hget(self.keys.batch(job_id), "webhook_state")
            return b, raw.encode() if isinstance(raw, str) else raw
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.job(job_id), VIEW_FIELDS)
            pipe.pttl(self.keys.job(job_id))
            raw, pttl = pipe.execute()
        if raw[0] is None:
            return None, None
        job = decode_fields(raw)
        job["id"] = job_id
        job["expires_in"] = pttl / 1000 if pttl and pttl > 0 else None
        return job, raw[_STATE_INDEX]

    def attempt(self, job: dict[str, Any], msg_id: str, event: str, at: float) -> Outcome:
        """POST the signed event to the job's webhook URL; never raises."""
        t0 = time.perf_counter()
        try:
            outcome = self._attempt(job, msg_id, event, at)
        except (BlockedAddress, UnsafeUrl) as e:
            outcome = Outcome(error=f"BlockedAddress: {e}")
        except socket.gaierror as e:
            outcome = Outcome(error=f"DNSError: {e}", retryable_error=True)
        except httpx.TimeoutException as e:
            outcome = Outcome(error=f"Timeout: no answer within "
                                    f"{self.settings.webhook_timeout_s:g} s ({type(e).__name__})",
                              retryable_error=True)
        except httpx.TransportError as e:
            log.warning("webhook of job %s: %r", job["id"], e, exc_info=True)
            outcome = Outcome(error=f"{type(e).__name__}: {e}", retryable_error=True)
        except Exception as e:  # a bug must not lose the delivery: log, count, retry
            log.error("webhook of job %s: unexpected error", job["id"], exc_info=True)
            outcome = Outcome(error=f"{type(e).__name__}: {e}", retryable_error=True)
        return dataclasses.replace(outcome, duration_ms=(time.perf_counter() - t0) * 1000)

    def _attempt(self, job: dict[str, Any], msg_id: str, event: str, at: float) -> Outcome:
        secrets = self.settings.webhook_secrets
        if not secrets:
            return Outcome(error="NotConfigured: no PREDQ_WEBHOOK_SECRETS on the worker; "
                                 "webhooks are never sent unsigned")
        target = resolve(job["webhook"]["url"], self.allow, self.resolver)
        view = bstore.batch_json(job) if bstore.is_batch_id(job["id"]) else job_json(job)
        body = payload(event, at, view)
        hdrs = headers(secrets, msg_id, int(at), body)
        return self._post(target, body, hdrs)

    def _post(self, target: Target, body: bytes, hdrs: dict[str, str]) -> Outcome:
        """One request to the checked address, reading at most the response cap."""
        hdrs["host"] = target.host_header
        ext = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
        deadline = time.monotonic() + self.settings.webhook_timeout_s
        cap = self.settings.webhook_max_response_bytes
        with self.http.stream("POST", target.url, content=body, headers=hdrs,
                              extensions=ext) as resp:
            seen = 0
            for chunk in resp.iter_raw():
                seen += len(chunk)
                if seen >= cap or time.monotonic() > deadline:
                    break
            code = resp.status_code
            retry_after = parse_retry_after(resp.headers.get("retry-after"), time.time())
        error = "Redirect: redirects are not followed" if 300 <= code < 400 else None
        return Outcome(status_code=code, error=error, retry_after=retry_after)
