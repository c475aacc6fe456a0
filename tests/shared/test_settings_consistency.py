"""Settings that would contradict each other are refused at start-up, naming both."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from predq.shared.settings import Settings


def test_the_defaults_agree_with_each_other() -> None:
    s = Settings()
    assert s.batch_time_limit_s == 2 * s.job_time_limit_s + 10
    assert s.visibility_timeout_s > s.batch_time_limit_s
    assert s.stuck_after_s > s.batch_time_limit_s
    # the reaper is the safety net behind kombu's own restore, so it comes later
    assert s.stuck_after_s > s.visibility_timeout_s


@pytest.mark.parametrize(("over", "named"), [
    ({"visibility_timeout_s": 600}, "PREDQ_VISIBILITY_TIMEOUT_S"),
    ({"visibility_timeout_s": 610}, "PREDQ_VISIBILITY_TIMEOUT_S"),
    ({"stuck_after_s": 610}, "PREDQ_STUCK_AFTER_S"),
    ({"job_time_limit_s": 5, "visibility_timeout_s": 15}, "PREDQ_VISIBILITY_TIMEOUT_S"),
    ({"job_time_limit_s": 5, "visibility_timeout_s": 60, "stuck_after_s": 10},
     "PREDQ_STUCK_AFTER_S"),
])
def test_a_timeout_within_the_batch_hard_limit_is_refused(over: dict[str, float],
                                                          named: str) -> None:
    with pytest.raises(ValidationError) as e:
        Settings(**over)
    text = str(e.value)
    assert named in text and "PREDQ_JOB_TIME_LIMIT_S" in text, text


def test_small_limits_allow_small_timeouts() -> None:
    s = Settings(job_time_limit_s=2, visibility_timeout_s=7, stuck_after_s=7)
    assert s.batch_time_limit_s == 6


def test_predq_worker_refuses_to_start(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    env.update(PREDQ_VISIBILITY_TIMEOUT_S="600", PREDQ_REDIS_URL="redis://127.0.0.1:1/0")
    proc = subprocess.run([sys.executable, "-m", "predq", "worker"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "PREDQ_VISIBILITY_TIMEOUT_S (600 s) must exceed" in proc.stderr, proc.stderr[-2000:]
    assert "PREDQ_JOB_TIME_LIMIT_S" in proc.stderr
