"""The API's side of webhooks (asyncio Redis): the submit-time check, redelivery, dead letters.

Routes stay thin: they call these and shape the response. Errors are the named errors of
``predq.shared.errors`` (InvalidInput 422, JobNotFound 404, JobConflict 409).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from predq.shared.errors import InvalidInput, JobConflict, JobNotFound
from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import webhook_message
from predq.shared.redis_conn import AsyncRedis
from predq.shared.registry.schema import WebhookSpec
from predq.shared.settings import Settings
from predq.shared.webhooks.signing import event_for, iso
from predq.shared.webhooks.ssrf import AllowList, UnsafeUrl, check_url
from predq.shared.webhooks.state import WebhookStore, reopen

_CAS_TRIES = 5


def submit_guard(settings: Settings) -> Callable[[WebhookSpec], None]:
    """The check of a job's webhook at submit time (AppState.webhook_guard).

    Raises InvalidInput (422) when no signing secret is configured (predq never sends
    unsigned webhooks), or when the URL is plainly unsafe (see
    predq.shared.webhooks.ssrf.check_url).
    Addresses behind host names are checked again, resolved, at every delivery.
    """
    allow = AllowList.parse(settings.webhook_allow_hosts)
    enabled = bool(settings.webhook_secrets)

    def guard(spec: WebhookSpec) -> None:
        if not enabled:
            msg = ("webhooks are disabled on this server: no signing secret is configured "
                   "(PREDQ_WEBHOOK_SECRETS)")
            raise InvalidInput(msg, errors=[{"loc": ["body", "webhook"], "msg": msg,
                                             "type": "webhooks_disabled"}])
        try:
            check_url(spec.url, allow)
        except UnsafeUrl as e:
            raise InvalidInput(f"webhook URL refused: {e}", errors=[
                {"loc": ["body", "webhook", "url"], "msg": str(e), "type": "unsafe_url"}]) from e

    return guard


async def redeliver(client: AsyncRedis, settings: Settings, job_id: str) -> str:
    """Start a fresh round of attempts of a job's webhook (same webhook-id); its event.

    The new state, the removal from the dead letters and the task message are one atomic
    write. JobNotFound when the job is gone; JobConflict when it has no webhook, sends no
    event the webhook asks for, or a delivery is already pending or in flight.
    """
    keys = Keys(settings.key_prefix)
    store = WebhookStore(client, keys, settings.webhook_queue)
    for _ in range(_CAS_TRIES):
        row: list[Any] = await client.hmget(keys.job(job_id),
                                            ["status", "webhook", "webhook_state"])
        status_b, spec_b, raw_state = row
        if status_b is None:
            raise JobNotFound(f"no job {job_id!r}")
        if spec_b is None:
            raise JobConflict(f"job {job_id} has no webhook")
        status = status_b.decode()
        event = event_for(status)
        if event is None:
            raise JobConflict(f"a {status} job sends no webhook event")
        if event not in orjson.loads(spec_b)["events"]:
            raise JobConflict(f"the job's webhook does not ask for {event}")
        try:
            state = reopen(orjson.loads(raw_state) if raw_state else None, job_id, event)
        except ValueError as e:
            raise JobConflict(str(e)) from e
        written = await store.cas(job_id, event, raw_state, state, due=None, dead="rem",
                                  now=time.time(),
                                  message=webhook_message(job_id, event, settings.webhook_queue))
        if written == 1:
            return event
        if written == -1:
            raise JobNotFound(f"no job {job_id!r}")
    raise JobConflict("the webhook's state kept changing; retry")


async def dead_letters(client: AsyncRedis, settings: Settings, *, limit: int, offset: int
                       ) -> dict[str, Any]:
    """The dead-letter list, newest first: ``{"total", "items": [...]}``.

    Entries whose job has expired (after the result TTL) are dropped as they are found.
    """
    keys = Keys(settings.key_prefix)
    dead = keys.webhook_dead()
    await client.zremrangebyscore(dead, "-inf", repr(time.time() - settings.result_ttl_s))
    members: list[Any] = await client.zrevrange(dead, offset, offset + limit - 1,
                                                withscores=True)
    async with client.pipeline(transaction=False) as pipe:
        for member, _ in members:
            pipe.hmget(keys.job(member.decode()), ["status", "webhook", "webhook_state"])
        rows: list[Any] = await pipe.execute() if members else []
    items: list[dict[str, Any]] = []
    gone: list[bytes] = []
    for (member, score), (status, spec_b, state_b) in zip(members, rows, strict=True):
        if status is None or state_b is None:
            gone.append(member)
            continue
        state = orjson.loads(state_b)
        attempts = state.get("attempts") or []
        items.append({
            "job_id": member.decode(),
            "event": state.get("event"),
            "url": orjson.loads(spec_b)["url"] if spec_b else None,
            "webhook_id": state.get("webhook_id"),
            "state": state.get("state"),
            "failed_at": iso(score),
            "n_attempts": state.get("n_attempts", len(attempts)),
            "detail": state.get("detail"),
            "last_attempt": attempts[-1] if attempts else None,
        })
    if gone:
        await client.zrem(dead, *gone)
    return {"total": await client.zcard(dead), "items": items}
