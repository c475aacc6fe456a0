"""Backpressure: a full queue answers 429 with a Retry-After derived from the drain rate.

Issue 5, FAULTS: "Backpressure". ``PREDQ_QUEUE_MAX_ROWS`` bounds the rows queued per model.
Past it, ``POST /v1/models/{name}/jobs`` answers ``429 application/problem+json`` with a
``Retry-After`` computed from the model's measured drain rate (rows finished recently): so it
is not a constant, it grows with what must drain first, and a model with no measurement yet
gets a conservative default. ``GET /v1/jobs/{id}`` shows ``queue_position`` (and, once a rate
is known, ``eta_seconds``) for a queued job. A rejected submission leaves nothing behind: its
Idempotency-Key can be used again once the queue drains.
"""

from __future__ import annotations

from typing import Any

import pytest

from predq.demo import mixed_sample_rows
from tests.reliability.conftest import irows

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

MAX_ROWS = 20


def _fill(api: Any, model: str, rows: Any) -> list[str]:
    """Submit 5-row jobs until the first 429; the ids accepted."""
    ids: list[str] = []
    for i in range(MAX_ROWS // 5 + 3):
        r = api.post_job(model, rows(5, seed=i))
        if r.status_code == 429:
            return ids
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    raise AssertionError(f"{model}: no 429 after {len(ids)} jobs of 5 rows (limit {MAX_ROWS})")


def _retry_after(r: Any) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 429 and "queue" in body["detail"].lower(), body
    value = int(r.headers["retry-after"])
    assert value >= 1
    return value


def test_full_queue_gives_429_with_a_retry_after_from_the_drain_rate(rstack: Any) -> None:
    s = rstack(concurrency=1, PREDQ_QUEUE_MAX_ROWS=str(MAX_ROWS), PREDQ_MAX_WAIT_MS="5")
    api = s.api
    # measure a drain rate for iris: 100 rows through the worker, 10 at a time (the queue
    # holds 20)
    for k in range(10):
        done = [api.submit("iris", irows(5, seed=10 * k + i)) for i in range(2)]
        assert all(v["status"] == "succeeded" for v in api.wait_all(done, 30).values())
    s.workers[0].stop()  # nothing consumes now
    # iris (rate known) fills up
    queued = _fill(api, "iris", irows)
    assert len(queued) == MAX_ROWS // 5
    small = _retry_after(api.post_job("iris", irows(1)))
    big = _retry_after(api.post_job("iris", irows(MAX_ROWS)))
    # mixed (no rate measured yet) fills up too
    _fill(api, "mixed", mixed_sample_rows)
    unknown = _retry_after(api.post_job("mixed", mixed_sample_rows(1)))
    # Retry-After is derived from the rate: more rows to drain first, a later retry; and a
    # model with a measured rate is told a shorter wait than one without a measurement.
    assert big > small, (small, big)
    assert small < unknown and big <= unknown, (small, big, unknown)
    # a queued job shows where it stands and, with a rate known, when it should run
    views = [api.get(j) for j in queued]
    assert all(v["status"] == "queued" for v in views)
    positions = [v.get("queue_position") for v in views]
    assert positions == sorted(positions) and positions[0] == 0 and positions[-1] >= 1, positions
    etas = [v.get("eta_seconds") for v in views]
    assert all(e is not None and e >= 0 for e in etas), etas
    assert etas == sorted(etas) and etas[-1] > etas[0], etas
    # a rejected POST leaves nothing behind: its Idempotency-Key is still free
    key = {"Idempotency-Key": "bp-1"}
    assert api.post_job("iris", irows(3), headers=key).status_code == 429
    # once a worker drains the queue, the same request is accepted
    s.add_worker(1)
    assert all(v["status"] == "succeeded" for v in api.wait_all(queued, 60).values())
    r = api.post_job("iris", irows(3), headers=key)
    assert r.status_code == 202, r.text
    assert "idempotent-replayed" not in r.headers
    assert api.wait_all([r.json()["id"]], 30)[r.json()["id"]]["status"] == "succeeded"
