"""The delivery state of a job's webhook, and its atomic updates in Redis.

The state is JSON in the job hash's ``webhook_state`` field::

    {"state": "pending" | "delivering" | "delivered" | "failed",
     "event", "webhook_id", "attempts": [{"at", "status_code", "error", "duration_ms"}],
     "tries" (attempts in this round), "n_attempts" (ever), "next_at", "lease_until", "detail"}

Transitions are pure functions (:func:`begin`, :func:`record`, :func:`reopen`); each result
is written by one compare-and-set script (:class:`WebhookStore`) that also keeps two sorted
sets in step:

- ``webhook_due`` (member ``"<job_id>|<event>"``, score: Unix time) holds every delivery that
  is not finished: a retry's due time, or an attempt's lease. The worker's pump turns due
  members into task messages. Because an in-flight attempt keeps its member (scored at its
  lease), a worker that dies mid-attempt does not lose the delivery.
- ``webhook_dead`` (member: job id, score: when it failed) is the dead-letter list.

Invariants: a state is only written over the exact bytes it was computed from (so two
workers holding duplicate messages cannot both attempt); nothing is written to a job hash
that no longer exists; ``attempts`` keeps the last MAX_ATTEMPTS_KEPT entries.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal

import orjson

from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.status import DeliveryState
from predq.shared.lua import lua_script
from predq.shared.redis_conn import RedisClient
from predq.shared.webhooks.signing import Outcome, iso, next_delay, webhook_id

PENDING, DELIVERING, DELIVERED = (DeliveryState.PENDING, DeliveryState.DELIVERING,
                                  DeliveryState.DELIVERED)
#: Attempt log entries kept per job (older ones are dropped; ``n_attempts`` counts all).
MAX_ATTEMPTS_KEPT = 50
#: Marker for :meth:`WebhookStore.cas`: leave the job's due entry as it is.
KEEP = "-"

State = dict[str, Any]
DeadAction = Literal["add", "rem", "keep"]

_CAS = lua_script(__file__, "cas")  # lua/cas.lua: KEYS, ARGV, returns

_PUMP = lua_script(__file__, "pump")  # lua/pump.lua: KEYS, ARGV, returns


def due_member(job_id: str, event: str) -> str:
    return f"{job_id}|{event}"


def split_member(member: str | bytes) -> tuple[str, str]:
    text = member.decode() if isinstance(member, bytes) else member
    job_id, _, event = text.partition("|")
    return job_id, event


def initial(job_id: str, event: str) -> State:
    """The state before the first attempt."""
    return {"state": PENDING, "event": event, "webhook_id": webhook_id(job_id, event),
            "attempts": [], "tries": 0, "n_attempts": 0, "next_at": None,
            "lease_until": None, "detail": None}


def begin(cur: State | None, job_id: str, event: str, now: float, lease_s: float,
          schedule: Sequence[float], first_delay: float = 0.0) -> tuple[State | None, str]:
    """Whether a message for (job, event) may attempt now: ``(new state, "go")``, or
    ``(None, reason)`` to drop it as a duplicate, or ``(failed state, "dead")`` when a lost
    attempt (its worker died; the lease ran out) used up the last try, or ``(pending state,
    "deferred")`` when this is the very first message and ``first_delay`` (the schedule's
    first entry, jittered) is positive: the first attempt is then due after it."""
    if cur is None and first_delay > 0:
        state = initial(job_id, event)
        state["next_at"] = now + first_delay
        return state, "deferred"
    state = dict(cur) if cur is not None else initial(job_id, event)
    if state.get("event") != event:
        return None, f"state belongs to {state.get('event')}"
    status = state["state"]
    if status in (DELIVERED, DeliveryState.FAILED):
        return None, f"already {status}"
    if status == DELIVERING:
        if (state.get("lease_until") or 0) > now:
            return None, "an attempt is in flight"
        lost = Outcome(error="LostAttempt: the worker stopped during the attempt",
                       retryable_error=True)
        state = _append(state, lost, state.get("lease_until") or now)
        if state["tries"] >= len(schedule):
            return _fail(state, f"gave up after {state['tries']} attempts"), "dead"
    elif status == PENDING and (state.get("next_at") or 0) > now:
        return None, "the next attempt is not due yet"
    state.update(state=DELIVERING, lease_until=now + lease_s, next_at=None)
    return state, "go"


def record(state: State, outcome: Outcome, at: float, now: float,
           schedule: Sequence[float], rng: random.Random | None = None,
           expires_at: float | None = None) -> tuple[State, float | None, bool]:
    """The state after one attempt, with the due score (None: none) and whether it is dead.

    ``expires_at`` is when the job's record expires: a retry due after it could never be
    made, so the delivery fails now, saying how many scheduled attempts were dropped.
    """
    new = _append(dict(state), outcome, at)
    new["lease_until"] = None
    verdict = outcome.verdict
    if verdict == "delivered":
        new.update(state=DELIVERED, detail=None)
        return new, None, False
    if verdict == "gone":
        return _fail(new, "the receiver answered 410 Gone: not retried"), None, True
    if verdict == "final":
        what = f"HTTP {outcome.status_code}" if outcome.status_code else outcome.error
        return _fail(new, f"not retried after {what}"), None, True
    delay = next_delay(new["tries"], schedule, outcome.retry_after, rng)
    if delay is None:
        return _fail(new, f"gave up after {new['tries']} attempts"), None, True
    if expires_at is not None and now + delay >= expires_at:
        dropped = len(schedule) - new["tries"]
        return _fail(new, f"gave up after {new['tries']} attempts: the next one was due in "
                          f"{delay:.0f} s, after the job expires (PREDQ_RESULT_TTL_S), so "
                          f"{dropped} later attempt(s) of PREDQ_WEBHOOK_RETRY_SCHEDULE_S "
                          "were dropped"), None, True
    new.update(state=PENDING, next_at=now + delay)
    return new, now + delay, False


def reopen(cur: State | None, job_id: str, event: str) -> State:
    """The state of an operator's redelivery: a fresh round of attempts, same webhook-id.

    Raises ValueError while a delivery is pending or in flight.
    """
    state = dict(cur) if cur is not None else initial(job_id, event)
    if cur is not None and cur.get("state") in (PENDING, DELIVERING):
        raise ValueError(f"a delivery is already {cur['state']}; wait for it to end")
    state.update(state=PENDING, event=event, tries=0, next_at=None, lease_until=None,
                 detail=None)
    return state


def public(state: State | None, job_status: str, wanted_event: str | None) -> dict[str, Any]:
    """The part of the state GET /v1/jobs/{id} shows (never a secret or signature).

    Without a state yet: ``pending`` while the job runs or its first attempt is queued, and
    ``skipped`` when the job ended without an event it asked for (cancelled, expired, or an
    event left out of ``events``).
    """
    if not state:
        ended = job_status not in ("queued", "running")
        return {"state": "skipped" if ended and wanted_event is None else PENDING,
                "attempts": []}
    next_at = state.get("next_at")
    return {"state": state["state"], "webhook_id": state.get("webhook_id"),
            "attempts": state.get("attempts", []),
            "next_attempt_at": iso(next_at) if next_at else None,
            "detail": state.get("detail")}


def _append(state: State, outcome: Outcome, at: float) -> State:
    state["attempts"] = [*state.get("attempts", []), outcome.log_entry(at)][-MAX_ATTEMPTS_KEPT:]
    state["tries"] = state.get("tries", 0) + 1
    state["n_attempts"] = state.get("n_attempts", 0) + 1
    return state


def _fail(state: State, detail: str) -> State:
    state.update(state=DeliveryState.FAILED, next_at=None, lease_until=None, detail=detail)
    return state


class WebhookStore(Generic[RedisClient]):
    """The two scripts bound to one Redis client (sync or asyncio: calls return whatever
    the client returns)."""

    def __init__(self, client: RedisClient, keys: Keys, queue: str) -> None:
        self.client: RedisClient = client
        self.keys = keys
        self.queue = queue
        self._cas: Callable[..., Any] = client.register_script(_CAS)
        self._pump: Callable[..., Any] = client.register_script(_PUMP)

    def cas(self, job_id: str, event: str, expected: bytes | None, new: State, *,
            due: float | str | None, dead: DeadAction, now: float, message: bytes = b""
            ) -> Any:
        """Write ``new`` if the stored state is still ``expected``; 1, 0 or -1 (see _CAS)."""
        due_arg = "" if due is None else (KEEP if due == KEEP else repr(float(due)))
        # A batch's webhook (predq.shared.batchfiles.batchstore) keeps its state in the batch's
        # hash.
        record = self.keys.batch(job_id) if job_id.startswith("batch_") else self.keys.job(job_id)
        return self._cas(
            keys=[record, self.keys.webhook_due(), self.keys.webhook_dead(),
                  self.queue],
            args=[expected or b"", orjson.dumps(new), due_member(job_id, event), due_arg,
                  dead, job_id, repr(now), message],
        )

    def due(self, now: float, limit: int) -> Any:
        """Members whose time has come, oldest first."""
        return self.client.zrangebyscore(self.keys.webhook_due(), "-inf", repr(now),
                                         start=0, num=limit)

    def pump(self, now: float, lease_until: float, entries: list[tuple[bytes, bytes]]) -> Any:
        """Publish (member, message) pairs still due; each is re-scored at ``lease_until``."""
        args: list[Any] = [repr(now), repr(lease_until)]
        for member, message in entries:
            args += [member, message]
        return self._pump(keys=[self.keys.webhook_due(), self.queue], args=args)
