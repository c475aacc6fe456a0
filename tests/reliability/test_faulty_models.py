"""Faulty models in a real worker: only their own jobs fail, each with an error naming the cause.

Issue 5, FAULTS: "A model that raises in predict, returns the wrong number of rows, or takes
too long". The worker process (concurrency 1) gets *mixed* batches: while a blocker job keeps
the pool busy, jobs of the faulty models and of iris are buffered and handed over together
(``PREDQ_MAX_WAIT_MS`` is long enough that they merge), so the faults happen inside the same
batch as healthy jobs. Afterwards the same worker process must keep serving.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.reliability.conftest import diagnose, irows, pool_pids, xrows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIME_LIMIT_S = 2.0
ENV = {
    "PREDQ_JOB_TIME_LIMIT_S": str(TIME_LIMIT_S),
    "PREDQ_MAX_WAIT_MS": "1500",
    "PREDQ_VISIBILITY_TIMEOUT_S": "60",
}


def _blocker(s: Any) -> str:
    """A job of the 1-s ``pause`` model, running: later jobs are buffered behind it."""
    j = s.api.submit("pause", xrows(1))
    assert s.api.wait_status(j, {"running", "succeeded"}, 20)["status"] == "running"
    return j


def _largest_batch(s: Any) -> int:
    r = s.api.c.get("/v1/stats/batches")
    assert r.status_code == 200, r.text
    return max((b["jobs"] for b in r.json()["recent"]), default=0)


def test_raising_and_short_models_fail_only_their_jobs(rstack: Any, push: Any, redis_url: str,
                                                       settings_env: dict[str, str]) -> None:
    push("pause", "killer", delay=1.0)
    push("boom", "raise")    # raises on any row with x1 < 0
    push("short", "short")   # returns one row fewer than it was given
    s = rstack(concurrency=1, **ENV)
    pid_before = pool_pids(s.workers[0])
    api = s.api
    _blocker(s)
    iris = [api.submit("iris", irows(3, seed=i)) for i in range(3)]
    boom_ok = [api.submit("boom", xrows(2)) for _ in range(3)]
    boom_bad = api.submit("boom", [*xrows(2), {"x1": -1.0, "x2": 0.0}])  # one poison row
    boom_ok.append(api.submit("boom", xrows(1)))
    short = [api.submit("short", xrows(2)) for _ in range(2)]
    iris += [api.submit("iris", irows(2, seed=10 + i)) for i in range(3)]
    views = api.wait_all([*iris, *boom_ok, boom_bad, *short], 60)
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    ok = [*iris, *boom_ok]
    bad = {j: views[j] for j in ok if views[j]["status"] != "succeeded"}
    assert not bad, "healthy jobs failed:\n" + diagnose(redis_url, prefix, bad)
    for j in ok:
        assert len(views[j]["outputs"]) == views[j]["n_inputs"]
    # the poison row fails its own job, naming the model's error
    b = views[boom_bad]
    assert b["status"] == "failed", b
    assert b["error"]["type"] == "PredictError"
    assert "x1 must not be negative" in b["error"]["message"]
    assert "outputs" not in b
    # a model returning the wrong number of rows fails each of its jobs, saying so
    for j in short:
        e = views[j]
        assert e["status"] == "failed", e
        assert e["error"]["type"] == "OutputMismatch"
        assert "rows for" in e["error"]["message"] and "inputs" in e["error"]["message"]
    # the faults happened inside mixed batches (not one job per batch)
    assert _largest_batch(s) >= 5
    # the same worker (and the same pool process: nothing crashed) keeps serving
    assert s.workers[0].alive()
    assert pool_pids(s.workers[0]) == pid_before
    again = [api.submit("iris", irows(2)), api.submit("boom", xrows(2))]
    assert all(v["status"] == "succeeded" for v in api.wait_all(again, 30).values())


def test_a_slow_model_past_the_time_limit_fails_and_iris_still_succeeds(
        rstack: Any, push: Any, redis_url: str, settings_env: dict[str, str]) -> None:
    push("pause", "killer", delay=1.0)
    push("sluggish", "slow", delay=3 * TIME_LIMIT_S)  # far past the limit
    s = rstack(concurrency=1, **ENV)
    pid_before = pool_pids(s.workers[0])
    api = s.api
    _blocker(s)
    iris = [api.submit("iris", irows(3, seed=i)) for i in range(3)]
    slow = [api.submit("sluggish", xrows(2)) for _ in range(2)]
    iris += [api.submit("iris", irows(2, seed=10 + i)) for i in range(3)]
    t0 = time.monotonic()
    views = api.wait_all([*iris, *slow], 60)
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    bad = {j: views[j] for j in iris if views[j]["status"] != "succeeded"}
    assert not bad, "iris jobs failed:\n" + diagnose(redis_url, prefix, bad)
    for j in slow:
        e = views[j]
        assert e["status"] == "failed", diagnose(redis_url, prefix, {j: e})
        err = e["error"]
        assert err["type"] == "TimeLimitExceeded" or "time limit" in err["message"].lower(), err
        assert "time limit" in err["message"].lower(), err
    # failed by the limit, not after the model's own 6 s (plus the blocker and start-up)
    assert time.monotonic() - t0 < 3 * TIME_LIMIT_S + 10
    assert s.workers[0].alive()
    assert pool_pids(s.workers[0]) == pid_before, "the time limit replaced the pool process"
    again = [api.submit("iris", irows(2))]
    assert api.wait_all(again, 30)[again[0]]["status"] == "succeeded"


def test_one_slow_job_fails_alone_among_the_fast_jobs_merged_with_it(
        rstack: Any, push: Any, redis_url: str, settings_env: dict[str, str]) -> None:
    """Issue 13: the limit is per job. One job that makes its model slow is merged into a
    batch with fast jobs of the same model: only that job fails as TimeLimitExceeded."""
    push("pause", "killer", delay=1.0)
    push("lagging", "slowrow", delay=3 * TIME_LIMIT_S)  # slow only for a row with x1 < 0
    s = rstack(concurrency=1, **ENV)
    pid_before = pool_pids(s.workers[0])
    api = s.api
    _blocker(s)
    fast = [api.submit("lagging", xrows(2)) for _ in range(3)]
    slow = api.submit("lagging", [*xrows(1), {"x1": -1.0, "x2": 0.0}])
    fast += [api.submit("lagging", xrows(1)) for _ in range(3)]
    views = api.wait_all([*fast, slow], 60)
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    bad = {j: views[j] for j in fast if views[j]["status"] != "succeeded"}
    assert not bad, "fast jobs merged with the slow one failed:\n" + diagnose(
        redis_url, prefix, bad)
    for j in fast:
        assert len(views[j]["outputs"]) == views[j]["n_inputs"]
    e = views[slow]
    assert e["status"] == "failed", diagnose(redis_url, prefix, {slow: e})
    assert e["error"]["type"] == "TimeLimitExceeded", e["error"]
    assert "time limit" in e["error"]["message"].lower()
    assert _largest_batch(s) >= 7  # they really shared one batch
    # the limit did not cost the pool process
    assert pool_pids(s.workers[0]) == pid_before, "the time limit replaced the pool process"
