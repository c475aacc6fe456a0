"""A flapping Redis (the claim works, the finish fails) is reported as what it is.

Issue 13, "Limits that fail the right jobs": each time a batch fails outside its jobs it is
requeued, and each claim counts a delivery, so a Redis that keeps failing at the wrong moment
ended the job as ``PoisonJob: ... (its worker died each time)`` although no worker died. The
job's error must say what really happened: the result could not be stored because Redis
failed, and how many times. Real processes: redis-server, ``predq worker``, ``predq api``; the
model (:mod:`tests.helpers.flaky_store`) makes Redis refuse writes for a moment on every
prediction, so the finish after it fails with ``NOREPLICAS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import pytest

from predq.push import push_model
from tests.reliability.conftest import diagnose, irows, xrows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_flapping_redis_fails_the_job_saying_the_result_could_not_be_stored(
        rstack: Any, registry_with_models: Any, tmp_path: Path,
        settings_env: dict[str, str]) -> None:
    from tests.helpers.flaky_store import train

    path = tmp_path / "flaky.joblib"
    joblib.dump(train(hold=0.3), path)
    push_model(registry_with_models, path, "flaky")
    s = rstack(concurrency=1, PREDQ_MAX_DELIVERIES="3", PREDQ_VISIBILITY_TIMEOUT_S="120",
               PREDQ_JOB_TIME_LIMIT_S="30")
    job = s.api.submit("flaky", xrows(1))
    view = s.api.wait_all([job], 90)[job]
    prefix = settings_env["PREDQ_KEY_PREFIX"]
    assert view["status"] == "failed", diagnose(settings_env["PREDQ_REDIS_URL"], prefix,
                                                {job: view})
    err = view["error"]
    assert err["type"] == "ResultNotStored", diagnose(settings_env["PREDQ_REDIS_URL"], prefix,
                                                      {job: view})
    assert "could not be stored" in err["message"] and "Redis failed 3 time" in err["message"]
    assert "NOREPLICAS" in err["message"], err  # the last error, as Redis gave it
    assert "worker died" not in err["message"], err
    # the worker was fine all along: it serves the next job
    ok = s.api.submit("iris", irows(2))
    assert s.api.wait_all([ok], 60)[ok]["status"] == "succeeded"
