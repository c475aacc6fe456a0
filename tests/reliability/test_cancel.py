"""Cancellation at every stage of a job's life, and deadlines (``cancel_after``).

Issue 5, FAULTS: "Cancellation at every stage" and "Deadlines". The model is the traced
:class:`tests.helpers.killer.Killer` (no kill marker used): every predict call appends the
``x1`` values it saw to a trace file, and each job here has its own ``x1``, so the tests can
prove which jobs reached a predict call at all.

- queued (no worker yet): cancelled, never predicted once a worker runs;
- buffered in a worker's batch (delivered to the worker, waiting behind a running batch):
  cancelled, and left out of the predict call of the batch it was flushed with;
- running (mid-predict): cancelled at once; the result computed anyway is discarded and the
  job stays ``cancelled`` with no outputs;
- finished: 409 problem+json;
- ``cancel_after``: a job still queued past it becomes ``expired`` and is never predicted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import wait_no_message
from tests.helpers.killer import traced
from tests.reliability.conftest import broker_state, diagnose, wait_until, xrows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DELAY_S = 2.0
# The batch hard time limit (2 x 20 + 10 s) must stay below the visibility timeout.
ENV = {"PREDQ_MAX_WAIT_MS": "1500", "PREDQ_VISIBILITY_TIMEOUT_S": "60",
       "PREDQ_JOB_TIME_LIMIT_S": "20"}
#: Bound of the polls that wait for a message to be consumed and acknowledged.
SETTLE_S = 20.0


def _predicted(trace: Path, x1: float) -> int:
    return sum(1 for call in traced(str(trace)) if x1 in call)


@pytest.fixture
def traced_model(push: Any, tmp_path: Path) -> Path:
    trace = tmp_path / "trace.jsonl"
    push("pause", "killer", delay=DELAY_S, trace=str(trace))
    return trace


def _assert_never_runs_again(settings_env: dict[str, str], job_id: str) -> None:
    """The job's message is gone from the broker (consumed and acknowledged): no worker can
    deliver it any more, so what the test asserts next cannot change later."""
    places = wait_no_message(settings_env["PREDQ_REDIS_URL"],
                             [settings_env["PREDQ_DEFAULT_QUEUE"]], [job_id], SETTLE_S)
    assert not places[job_id], places


def _assert_cancelled_without_outputs(api: Any, job_id: str) -> None:
    v = api.get(job_id)
    assert v["status"] == "cancelled", v
    assert "outputs" not in v and v["error"] is None, v
    assert v["finished_at"] is not None


def test_cancel_a_queued_job_it_never_runs(rstack: Any, start_api: Any, keys: dict[str, str],
                                           traced_model: Path,
                                           settings_env: dict[str, str]) -> None:
    from tests.reliability.conftest import Api

    api = Api(start_api(extra_env=ENV), {"Authorization": f"Bearer {keys['user']}"})
    try:
        victim = api.submit("pause", xrows(2, x1=501.0))
        keep = api.submit("pause", xrows(2, x1=502.0))
        r = api.delete(victim)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        s = rstack(concurrency=1, **ENV)  # a worker now takes both messages
        assert s.api.wait_all([keep], 30)[keep]["status"] == "succeeded"
        _assert_never_runs_again(settings_env, victim)
        _assert_cancelled_without_outputs(api, victim)
        assert _predicted(traced_model, 501.0) == 0, traced(str(traced_model))
        assert _predicted(traced_model, 502.0) == 1
        assert api.delete(victim).status_code == 409  # cancelling twice: it already ended
    finally:
        api.close()


def test_cancel_a_job_buffered_in_a_worker_it_is_left_out_of_the_batch(
        rstack: Any, traced_model: Path, redis_url: str, settings_env: dict[str, str]) -> None:
    s = rstack(concurrency=1, **ENV)
    api = s.api
    blocker = api.submit("pause", xrows(1, x1=600.0))
    assert api.wait_status(blocker, {"running"}, 20)["status"] == "running"
    before = api.submit("pause", xrows(2, x1=601.0))
    victim = api.submit("pause", xrows(2, x1=602.0))
    after = api.submit("pause", xrows(2, x1=603.0))
    # the victim was delivered to the worker and waits in its buffer (not claimed, not queued
    # in Redis's list any more)
    assert wait_until(lambda: broker_state(redis_url, [victim])[victim].startswith("unacked"),
                      5), broker_state(redis_url, [victim])
    assert api.get(victim)["status"] == "queued"
    assert api.get(blocker)["status"] == "running"  # so the victim is still buffered
    r = api.delete(victim)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    views = api.wait_all([blocker, before, after], 30)
    bad = {j: v for j, v in views.items() if v["status"] != "succeeded"}
    assert not bad, diagnose(redis_url, settings_env["PREDQ_KEY_PREFIX"], bad)
    # its message was acknowledged: nothing will run it later
    _assert_never_runs_again(settings_env, victim)
    _assert_cancelled_without_outputs(api, victim)
    calls = traced(str(traced_model))
    assert _predicted(traced_model, 602.0) == 0, calls
    # its neighbours were predicted together, in one call, without it
    assert any(601.0 in c and 603.0 in c for c in calls), calls


def test_cancel_a_running_job_its_result_is_discarded(
        rstack: Any, traced_model: Path, redis_url: str, settings_env: dict[str, str]) -> None:
    s = rstack(concurrency=1, **ENV)
    api = s.api
    victim = api.submit("pause", xrows(3, x1=701.0))
    assert api.wait_status(victim, {"running"}, 20)["status"] == "running"
    r = api.delete(victim)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    # answered at once, not after the predict call: the batch still holds its message
    assert broker_state(redis_url, [victim])[victim].startswith("unacked"), \
        broker_state(redis_url, [victim])
    # the predict call finishes anyway; its result must not land
    assert wait_until(lambda: _predicted(traced_model, 701.0) >= 1, 10)
    other = api.submit("pause", xrows(1, x1=702.0))  # runs after the victim's batch ended
    assert api.wait_all([other], 30)[other]["status"] == "succeeded"
    # the victim's batch has ended (the pool has one process) and its message is acked:
    # the discarded result can never land later
    _assert_never_runs_again(settings_env, victim)
    _assert_cancelled_without_outputs(api, victim)
    api.assert_no_double_results()


def test_cancelling_a_finished_job_gives_409(rstack: Any, traced_model: Path) -> None:
    s = rstack(concurrency=1, **ENV)
    api = s.api
    done = api.submit("pause", xrows(1))
    assert api.wait_all([done], 30)[done]["status"] == "succeeded"
    r = api.delete(done)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "succeeded" in r.json()["detail"]
    v = api.get(done)
    assert v["status"] == "succeeded" and len(v["outputs"]) == 1


def test_cancel_after_expires_a_job_still_queued(rstack: Any, traced_model: Path,
                                                 redis_url: str,
                                                 settings_env: dict[str, str]) -> None:
    s = rstack(concurrency=1, **ENV)
    api = s.api
    blocker = api.submit("pause", xrows(1, x1=800.0))
    assert api.wait_status(blocker, {"running"}, 20)["status"] == "running"
    # still queued behind the blocker (2 s) when its 0.5 s deadline passes
    late = api.submit("pause", xrows(2, x1=801.0), cancel_after=0.5)
    # a generous deadline is no deadline: this one runs
    fine = api.submit("pause", xrows(2, x1=802.0), cancel_after=120)
    views = api.wait_all([blocker, late, fine], 30)
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    assert views[late]["status"] == "expired", diagnose(redis_url, prefix, {late: views[late]})
    assert "outputs" not in views[late]
    assert views[late]["error"] and "cancel_after" in views[late]["error"]["message"]
    assert views[fine]["status"] == "succeeded", diagnose(redis_url, prefix, {fine: views[fine]})
    _assert_never_runs_again(settings_env, late)
    assert _predicted(traced_model, 801.0) == 0, traced(str(traced_model))
    assert api.get(late)["status"] == "expired"
    # an expired job cannot be cancelled any more
    assert api.delete(late).status_code == 409


def test_cancel_after_with_no_worker_at_all(start_api: Any, keys: dict[str, str],
                                            traced_model: Path, rstack: Any,
                                            settings_env: dict[str, str]) -> None:
    """No worker runs past the deadline: the job must not stay 'queued' forever in the
    client's eyes, and the worker that comes later must not predict it."""
    from tests.reliability.conftest import Api

    api = Api(start_api(extra_env=ENV), {"Authorization": f"Bearer {keys['user']}"})
    try:
        late = api.submit("pause", xrows(1, x1=901.0), cancel_after=0.5)
        deadline = time.time() + 0.5
        # not synchronisation: the deadline is wall-clock time, so wait until it has passed
        assert wait_until(lambda: time.time() > deadline + 0.2, 5)
        s = rstack(concurrency=1, **ENV)
        assert s.api.wait_all([late], 20)[late]["status"] == "expired"
        _assert_never_runs_again(settings_env, late)
        assert _predicted(traced_model, 901.0) == 0
    finally:
        api.close()
