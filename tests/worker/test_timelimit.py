"""The per-job time limit: only a slow job fails, and the alarm never tears shared state.

In-process (the pytest main thread, where SIGALRM works as in a pool process), against a
real Redis for the batch tests.
"""

from __future__ import annotations

import io
import logging
import signal
import time
import traceback
from pathlib import Path
from typing import Any

import joblib
import orjson
import pytest
import redis

from predq.demo import iris_sample_rows
from predq.push import push_model
from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.scripts import Scripts
from predq.shared.registry.store import Registry
from predq.shared.settings import Settings
from predq.worker.model_cache import ModelCache
from predq.worker.predict import BatchPredictor
from predq.worker.timelimit import JobTimeLimit, interruptible, time_limit
from tests.helpers.faulty import train
from tests.worker.test_predict import submit

LIMIT_S = 0.5
FAST = [{"x1": 1.0, "x2": 0.0}] * 2
SLOW = [{"x1": -1.0, "x2": 0.0}]  # the "slowrow" model sleeps when it sees x1 < 0


@pytest.fixture
def slow_env(registry_with_models: Registry, settings_env: dict[str, str], tmp_path: Path
             ) -> dict[str, Any]:
    path = tmp_path / "slowrow.joblib"
    joblib.dump(train("slowrow", delay=6 * LIMIT_S), path)
    push_model(registry_with_models, path, "lagging")
    settings = Settings(job_time_limit_s=LIMIT_S)
    client = redis.Redis.from_url(settings.redis_url)
    scripts = Scripts(client, Keys(settings.key_prefix))
    predictor = BatchPredictor(scripts, settings, ModelCache(registry_with_models, 4))
    return {"settings": settings, "client": client, "scripts": scripts,
            "registry": registry_with_models, "predictor": predictor}


def status_and_error(e: dict[str, Any], job_id: str) -> tuple[str, dict[str, Any] | None]:
    raw = e["client"].hmget(Keys(e["settings"].key_prefix).job(job_id), "status", "error")
    return raw[0].decode(), orjson.loads(raw[1]) if raw[1] else None


@pytest.mark.integration
def test_one_slow_job_merged_with_fast_ones_fails_alone(slow_env: dict[str, Any]) -> None:
    e = slow_env
    reqs = [submit(e, "lagging", FAST, f"f{i}") for i in range(3)]
    reqs.insert(1, submit(e, "lagging", SLOW, "slow"))
    reqs.append(submit(e, "iris", iris_sample_rows(2), "iris"))
    report = e["predictor"].run("b1", reqs)
    status, err = status_and_error(e, "slow")
    assert status == "failed" and err is not None
    assert err["type"] == "TimeLimitExceeded" and "time limit" in err["message"], err
    for job_id in ("f0", "f1", "f2", "iris"):
        assert status_and_error(e, job_id) == ("succeeded", None), job_id
        assert report.outcomes[job_id][0] == "SUCCESS"
    assert report.outcomes["slow"][0] == "FAILURE"


@pytest.mark.integration
def test_two_slow_jobs_fail_and_the_fast_ones_between_them_succeed(
        slow_env: dict[str, Any]) -> None:
    e = slow_env
    reqs = [submit(e, "lagging", SLOW, "s1"), submit(e, "lagging", FAST, "f1"),
            submit(e, "lagging", SLOW, "s2"), submit(e, "lagging", FAST, "f2")]
    e["predictor"].run("b2", reqs)
    assert [status_and_error(e, j)[0] for j in ("s1", "f1", "s2", "f2")] == \
        ["failed", "succeeded", "failed", "succeeded"]


def _spin_logging(handler: logging.Handler) -> None:
    log = logging.getLogger("predq.tests.spin")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        while True:  # nearly all of the time is spent inside the logging module
            log.info("spinning %d", 1)
    finally:
        log.removeHandler(handler)


def test_the_alarm_never_raises_inside_logging() -> None:
    handler = logging.StreamHandler(io.StringIO())
    for _ in range(10):
        with pytest.raises(JobTimeLimit) as caught, time_limit(0.02), interruptible():
            _spin_logging(handler)
        # the frames from the test down to the one the alarm interrupted (the last one is
        # the signal handler's own)
        frames = traceback.extract_tb(caught.value.__traceback__)[:-1]
        assert frames[-1].name == "_spin_logging", frames[-1]
        assert not [f for f in frames if "logging" in Path(f.filename).parts], frames
        # the handler's lock was not left held: logging still works
        assert handler.lock.acquire(blocking=False)
        handler.lock.release()


def _alarm_fired() -> bool:
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_outside_the_predict_call_the_alarm_waits_for_the_next_call() -> None:
    before = signal.getsignal(signal.SIGALRM)
    with time_limit(0.05):
        with interruptible():
            pass  # a call that ends in time
        for _ in range(10_000_000):  # our own code, while the alarm fires: not interrupted
            if _alarm_fired():
                break
        assert _alarm_fired()
        with pytest.raises(JobTimeLimit), interruptible():
            pytest.fail("the next predict call must not start once the limit has passed")
    assert signal.getsignal(signal.SIGALRM) is before


def test_a_call_that_ends_in_time_leaves_no_alarm_behind() -> None:
    before = signal.getsignal(signal.SIGALRM)
    with time_limit(30):
        with interruptible():
            time.sleep(0.01)
        assert not _alarm_fired()
    assert _alarm_fired()  # cancelled with the block
    assert signal.getsignal(signal.SIGALRM) is before
    with interruptible():  # no limit armed: a no-op
        pass


def test_a_model_waiting_on_joblib_threads_is_still_interrupted() -> None:
    from joblib import Parallel, delayed

    with pytest.raises(JobTimeLimit), time_limit(0.2), interruptible():
        Parallel(n_jobs=2, prefer="threads")(delayed(time.sleep)(0.5) for _ in range(20))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["forest", "forest-threads", "hgb"])
def test_real_scikit_learn_models_are_still_interrupted(kind: str) -> None:
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.random((2000, 8))
    y = (x[:, 0] > 0.5).astype(int)
    est = {"forest": lambda: RandomForestClassifier(50, n_jobs=1),
           "forest-threads": lambda: RandomForestClassifier(50, n_jobs=2),
           "hgb": lambda: HistGradientBoostingClassifier(max_iter=20)}[kind]().fit(x, y)
    with pytest.raises(JobTimeLimit), time_limit(0.05), interruptible():
        while True:  # a model far slower than the limit
            est.predict_proba(x)
