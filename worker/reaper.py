"""The reaper: redelivers jobs stuck in ``running`` whose message is gone.

A worker that dies mid-batch leaves its jobs ``running``, and their claim leases lapse.
Normally kombu's Redis transport restores the unacknowledged messages after
``visibility_timeout`` and another worker claims them again. The reaper covers what that
cannot: a message lost with its worker's broker state, or acknowledged as a duplicate while
the dead worker's lease still lived. Every ``reaper_interval_s`` one worker (a Redis lock)
re-publishes the predict message of each job that has been ``running`` for longer than
``stuck_after_s`` and whose lease has lapsed (a live lease means a live worker predicts it,
however long that takes). The job store counts deliveries, so a job that keeps dying is
failed as a poison job, never looped forever; a copy that arrives while a lease lives is
skipped as a duplicate; and a finish only counts while the job is ``running``, so a
redelivery can never give a job two results.

The decisions are a pure function over plain data, :func:`stuck_jobs` (unit-tested without
Redis in ``tests/worker/test_reaper.py``); :func:`reap` is the I/O around it: it reads the
candidates and queue lengths from Redis, asks :func:`stuck_jobs`, and applies the answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import predict_message
from predq.shared.redis_conn import SyncRedis
from predq.shared.settings import Settings

log = logging.getLogger("predq.worker.reaper")

#: Most jobs redelivered per pass (the next pass takes the rest).
BATCH = 500


#: kombu's Redis transport keeps priority levels in sub-lists named ``<queue>\x06\x16<n>``.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

#: The two indexes the reaper looks through, by the status their jobs should have.
RUNNING, QUEUED = "running", "queued"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A job of the ``running`` or ``queued`` index, as the reaper read it."""

    job_id: str
    #: The index it was found in (RUNNING or QUEUED), and its score there (since when).
    index: str
    since: float
    #: The job's record (None where the field is missing).
    status: str | None
    model: str | None
    version: str | None
    n_inputs: str | None
    queue: str | None
    #: Whether its claim lease lives (a live worker predicts it).
    leased: bool

    def target_queue(self, default_queue: Callable[[str], str]) -> str:
        """The queue its predict message belongs in."""
        return self.queue or default_queue(self.model or "")


class Verdict(StrEnum):
    #: The job left that status (or its record is gone): take it off the index.
    FORGET = "forget"
    #: A live lease: not stuck; looked at again ``stuck_after_s`` from now.
    ALIVE = "alive"
    #: Queued while its queue still holds messages: it may be waiting in line, not lost.
    IN_LINE = "in_line"
    #: Stuck: republish its predict message, and look again ``stuck_after_s`` from now.
    REDELIVER = "redeliver"


@dataclass(frozen=True, slots=True)
class Decision:
    job: Candidate
    verdict: Verdict
    #: REDELIVER: the queue to publish to.
    queue: str | None = None


def queues_to_measure(candidates: Iterable[Candidate], default_queue: Callable[[str], str]
                      ) -> list[str]:
    """The queues whose length :func:`stuck_jobs` needs (those of the queued candidates that
    are still queued), in first-seen order."""
    out: dict[str, None] = {}
    for c in candidates:
        if c.index == QUEUED and c.status == QUEUED and c.model:
            out.setdefault(c.target_queue(default_queue))
    return list(out)


def stuck_jobs(candidates: Iterable[Candidate], now: float, *, stuck_after_s: float,
               queue_lengths: Mapping[str, int], default_queue: Callable[[str], str]
               ) -> list[Decision]:
    """What to do with each candidate (pure: no I/O, no clock).

    - not in its index's status any more (or no record): FORGET;
    - in its index for less than ``stuck_after_s``: no decision (not a candidate yet);
    - ``running`` with a live lease: ALIVE (a live worker predicts it, however long);
    - ``queued`` while its queue holds messages (``queue_lengths``): IN_LINE;
    - otherwise REDELIVER: its worker died and the message did not come back, or its message
      was lost (popped just as Redis went away), so nothing would ever run it.
    """
    cutoff = now - stuck_after_s
    decisions: list[Decision] = []
    for c in candidates:
        if c.since > cutoff:
            continue
        if c.status != c.index or not c.model:
            decisions.append(Decision(c, Verdict.FORGET))
        elif c.leased and c.index == RUNNING:
            decisions.append(Decision(c, Verdict.ALIVE))
        else:
            q = c.target_queue(default_queue)
            if c.index == QUEUED and queue_lengths.get(q, 0):
                decisions.append(Decision(c, Verdict.IN_LINE))
            else:
                decisions.append(Decision(c, Verdict.REDELIVER, q))
    return decisions


def reap(client: SyncRedis, keys: Keys, settings: Settings, now: float | None = None) -> list[str]:
    """Redeliver stuck jobs (see :func:`stuck_jobs`); returns their ids. Errors are logged,
    never raised.

    - ``running`` for longer than ``stuck_after_s``: its worker died and the message did not
      come back (kombu restores unacked messages after ``visibility_timeout_s`` first).
    - ``queued`` for longer than ``stuck_after_s`` while its queue is empty: its message was
      lost (popped by a consumer just as Redis went away, before kombu recorded it as
      unacknowledged), so nothing would ever run it.
    """
    now = time.time() if now is None else now
    try:
        if not client.set(keys.reaper_lock(), "1", nx=True,
                          ex=max(1, int(settings.reaper_interval_s))):
            return []
        cutoff = now - settings.stuck_after_s
        stuck_running: list[Any] = client.zrangebyscore(
            keys.running(), "-inf", cutoff, start=0, num=BATCH, withscores=True)
        stuck_queued: list[Any] = client.zrangebyscore(
            keys.queued(), "-inf", cutoff, start=0, num=BATCH, withscores=True)
        redelivered = _redeliver(client, keys, settings, stuck_running, RUNNING, now)
        redelivered += _redeliver(client, keys, settings, stuck_queued, QUEUED, now)
        if redelivered:
            log.warning("reaper redelivered %d stuck jobs: %s", len(redelivered),
                        redelivered[:20])
        return redelivered
    except Exception as e:
        log.warning("reaper pass failed: %r", e)
        return []


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _field(job: Candidate, value: str | None, name: str) -> str:
    if value is None:  # a broken record: the pass fails (logged) rather than guess
        raise ValueError(f"job {job.job_id} has no {name}")
    return value


def _read(client: SyncRedis, keys: Keys, found: list[tuple[bytes, float]], index: str
          ) -> list[Candidate]:
    """The candidates of one index: each job's record and whether its lease lives."""
    with client.pipeline(transaction=False) as pipe:
        for member, _ in found:
            job_id = member.decode()
            pipe.hmget(keys.job(job_id), "status", "model", "version", "n_inputs", "queue")
            pipe.exists(keys.lease(job_id))
        replies = pipe.execute()
    rows, leased = replies[0::2], replies[1::2]
    return [Candidate(member.decode(), index, float(score), _text(st), _text(model),
                      _text(version), _text(n), _text(queue), bool(held))
            for (member, score), (st, model, version, n, queue), held
            in zip(found, rows, leased, strict=True)]


def _redeliver(client: SyncRedis, keys: Keys, settings: Settings,
               found: list[tuple[bytes, float]], index: str, now: float) -> list[str]:
    if not found:
        return []
    candidates = _read(client, keys, found, index)
    lengths = {q: sum(client.llen(q + s) for s in _PRIORITY_SUFFIXES)
               for q in queues_to_measure(candidates, settings.queue_for)}
    decisions = stuck_jobs(candidates, now, stuck_after_s=settings.stuck_after_s,
                           queue_lengths=lengths, default_queue=settings.queue_for)
    key = keys.running() if index == RUNNING else keys.queued()
    redelivered: list[str] = []
    with client.pipeline(transaction=False) as pipe:
        for d in decisions:
            job = d.job
            if d.verdict is Verdict.FORGET:
                pipe.zrem(key, job.job_id)
            elif d.verdict is Verdict.ALIVE:
                pipe.zadd(key, {job.job_id: now})
            elif d.verdict is Verdict.REDELIVER:
                q = _field(job, d.queue, "queue")
                pipe.lpush(q, predict_message(
                    job.job_id, _field(job, job.model, "model"),
                    _field(job, job.version, "version"),
                    int(_field(job, job.n_inputs, "n_inputs")), q))
                pipe.zadd(key, {job.job_id: now})
                redelivered.append(job.job_id)
        pipe.execute()
    return redelivered
