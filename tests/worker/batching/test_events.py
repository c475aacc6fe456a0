"""The task events of micro-batched jobs: what Flower shows must not change, only their count.

Flower builds its task list with ``celery.events.state.State``; these tests feed that same
class with the events the consumer's helpers send (through a stand-in of Celery's event
dispatcher, which stamps each event as it does) and compare the task Flower would show with
the one Celery's three events per job (task-received, task-started, final) used to give.
tests/e2e/test_flower.py does the same against a real worker and a real Flower.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery.events.state import State

from predq.worker.batching import consumer as c

HOST = "w@test"
SHOWN = ("name", "args", "kwargs", "state", "received", "started", "succeeded", "failed",
         "revoked", "rejected", "runtime", "result", "exception", "worker")


class Req:
    """A Celery Request as the helpers use it; its events go to ``sink``."""

    name = "predq.predict"
    kwargsrepr = "{}"
    root_id = parent_id = None

    def __init__(self, job: str, sink: list[dict[str, Any]]) -> None:
        self.id = self.root_id = job
        self.argsrepr = repr([job, "iris", "1", 3])
        self.sink = sink

    def send_event(self, kind: str, **fields: Any) -> None:
        # celery.events.Event: the time of sending, unless the fields carry one
        event = {"hostname": HOST, "utcoffset": 0, "pid": 1, "clock": len(self.sink) + 1,
                 "uuid": self.id, **fields, "type": kind}
        event.setdefault("timestamp", time.time())
        event["local_received"] = event["timestamp"]
        self.sink.append(event)


def shown(events: list[dict[str, Any]], job: str) -> dict[str, Any]:
    state = State()
    for e in events:
        state.event(dict(e))
    task = state.tasks[job]
    return {k: (getattr(task, k).hostname if k == "worker" and task.worker else
                getattr(task, k, None)) for k in SHOWN}


def three_events(job: str, t0: float, t1: float, t2: float, final: str,
                 **fields: Any) -> list[dict[str, Any]]:
    """What Celery's own strategy and the consumer used to send for one job."""
    sink: list[dict[str, Any]] = []
    r = Req(job, sink)
    r.send_event("task-received", timestamp=t0, **c._received_fields(r))
    r.send_event("task-started", timestamp=t1)
    r.send_event(final, timestamp=t2, **fields)
    return sink


@pytest.mark.parametrize(("outcome", "final", "fields"), [
    (("SUCCESS", 3, None), "task-succeeded", {"result": "batch b1"}),
    (("REVOKED", 0, "expired"), "task-revoked",
     {"terminated": False, "signum": None, "expired": True}),
    (("FAILURE", 0, "PredictError: bad"), "task-failed",
     {"exception": "PredictError: bad", "traceback": ""}),
])
def test_a_fast_batch_sends_one_event_per_job_and_flower_shows_the_same(
        outcome: tuple[Any, ...], final: str, fields: dict[str, Any]) -> None:
    sink: list[dict[str, Any]] = []
    reqs = [Req("j1", sink), Req("j2", sink)]
    c._announce(reqs)
    received = reqs[0]._predq_received_at
    time.sleep(0.01)
    started = time.time()
    time.sleep(0.01)
    runtime = time.time() - started
    c._send_outcomes(reqs, {"outcomes": {"j1": outcome, "j2": outcome}}, "b1", runtime)

    assert [e["type"] for e in sink] == [final, final]  # was 3 per job
    for job in ("j1", "j2"):
        got = shown(sink, job)
        mine = next(e for e in sink if e["uuid"] == job)
        if final == "task-succeeded":
            fields = {**fields, "runtime": runtime}
        was = shown(three_events(job, received, mine["started"], mine["timestamp"], final,
                                 **fields), job)
        assert got == was
        assert got["name"] == "predq.predict" and job in got["args"]
        assert received <= got["started"] <= mine["timestamp"]
        assert abs(got["started"] - started) < 0.005


def test_a_long_batch_shows_its_jobs_while_it_runs() -> None:
    sink: list[dict[str, Any]] = []
    r = Req("j1", sink)
    c._announce([r])
    started = time.time()
    c._announce_running([r], started)  # the in-flight timer of on_accepted
    assert [e["type"] for e in sink] == ["task-received", "task-started"]
    assert shown(sink, "j1")["state"] == "STARTED"
    assert shown(sink, "j1")["started"] == started
    c._send_outcomes([r], {"outcomes": {"j1": ("SUCCESS", 1, None)}}, "b1", 0.5)
    assert [e["type"] for e in sink] == ["task-received", "task-started", "task-succeeded"]
    assert "name" not in sink[-1]  # already shown: the final event is Celery's own
    assert shown(sink, "j1")["state"] == "SUCCESS"
    c._announce_running([r], started)  # the timer of a batch that returned: nothing
    assert len(sink) == 3


def test_a_duplicate_delivery_is_received_and_started_but_never_final() -> None:
    sink: list[dict[str, Any]] = []
    reqs = [Req("j1", sink), Req("j1", sink)]
    c._announce(reqs)
    c._send_outcomes(reqs, {"outcomes": {"j1": ("SUCCESS", 1, None)}, "duplicates": [1]},
                     "b1", 0.01)
    kinds = [e["type"] for e in sink]
    assert kinds.count("task-succeeded") == 1
    assert kinds.count("task-received") == kinds.count("task-started") == 1
    assert shown(sink, "j1")["state"] == "SUCCESS"


def test_a_job_given_back_unrun_is_received_then_rejected() -> None:
    """Flower counts prefetched tasks up on task-received and down on task-rejected: a job
    never shown before still sends both (a rejected one carries no started time)."""
    sink: list[dict[str, Any]] = []
    r = Req("j1", sink)
    c._job_event(r, "task-rejected", None, requeue=True)
    assert [e["type"] for e in sink] == ["task-received", "task-rejected"]
    got = shown(sink, "j1")
    # celery.events.state ranks REJECTED below RECEIVED: the job shows as received, with
    # its rejected time, as it did when task-received was sent at dispatch
    assert got["state"] == "RECEIVED" and got["rejected"] is not None
    assert got["name"] == "predq.predict" and got["started"] is None


def test_flowers_prefetch_gauge_stays_balanced() -> None:
    """Flower's metrics read the merged task: one final event with received and started
    moves its prefetched-tasks gauge neither up nor down."""
    from flower.events import PrometheusMetrics

    sink: list[dict[str, Any]] = []
    reqs = [Req(f"j{i}", sink) for i in range(3)]
    c._announce(reqs)
    c._announce_running(reqs[:1], time.time())  # one long-running, shown while it runs
    c._send_outcomes(reqs, {"outcomes": {r.id: ("SUCCESS", 1, None) for r in reqs}},
                     "b1", 0.01)
    c._job_event(Req("j9", sink), "task-rejected", None, requeue=True)
    metrics = PrometheusMetrics()
    state = State()
    for e in sink:
        state.event(dict(e))
        metrics.observe_task(HOST, e, state.tasks[e["uuid"]])
    gauge = metrics.number_of_prefetched_tasks.labels(HOST, "predq.predict")
    assert gauge._value.get() == 0
