"""The reaper's decisions (predq.worker.reaper.stuck_jobs), over plain data: no Redis.

Which jobs are stuck: ``running`` longer than ``stuck_after_s`` with a lapsed lease, or
``queued`` longer than that while their queue is empty. What the real-Redis pass does with
the answers is covered by tests/worker/test_leases.py and tests/reliability/.
"""

from __future__ import annotations

from typing import Any

from predq.worker.reaper import (
    QUEUED,
    RUNNING,
    Candidate,
    Decision,
    Verdict,
    queues_to_measure,
    stuck_jobs,
)

NOW = 1_000.0
STUCK_AFTER = 30.0


def default_queue(model: str) -> str:
    return f"predq.{model}"


def cand(job_id: str, index: str = RUNNING, *, age: float = 60.0, **over: Any) -> Candidate:
    fields: dict[str, Any] = {"status": index, "model": "iris", "version": "1",
                              "n_inputs": "2", "queue": None, "leased": False}
    fields.update(over)
    return Candidate(job_id=job_id, index=index, since=NOW - age, **fields)


def decide(*candidates: Candidate, lengths: dict[str, int] | None = None) -> list[Decision]:
    return stuck_jobs(candidates, NOW, stuck_after_s=STUCK_AFTER, queue_lengths=lengths or {},
                      default_queue=default_queue)


def verdicts(decisions: list[Decision]) -> dict[str, Verdict]:
    return {d.job.job_id: d.verdict for d in decisions}


def test_a_running_job_with_a_lapsed_lease_is_redelivered_to_its_models_queue() -> None:
    [d] = decide(cand("r"))
    assert d.verdict is Verdict.REDELIVER and d.queue == "predq.iris"


def test_the_queue_recorded_on_the_job_wins() -> None:
    [d] = decide(cand("r", queue="predq.gpu"))
    assert d.queue == "predq.gpu"


def test_a_running_job_with_a_live_lease_is_alive_however_long() -> None:
    assert verdicts(decide(cand("r", leased=True, age=10_000))) == {"r": Verdict.ALIVE}


def test_a_job_younger_than_stuck_after_is_no_candidate() -> None:
    assert decide(cand("r", age=STUCK_AFTER - 0.001), cand("q", QUEUED, age=1.0)) == []
    assert verdicts(decide(cand("r", age=STUCK_AFTER))) == {"r": Verdict.REDELIVER}


def test_a_job_that_left_its_status_or_lost_its_record_is_forgotten() -> None:
    out = verdicts(decide(cand("done", status="succeeded"), cand("gone", status=None,
                                                                  model=None),
                          cand("nomodel", model=""), cand("q", QUEUED, status="running")))
    assert out == {"done": Verdict.FORGET, "gone": Verdict.FORGET,
                   "nomodel": Verdict.FORGET, "q": Verdict.FORGET}


def test_a_queued_job_waits_in_line_while_its_queue_holds_messages() -> None:
    lengths = {"predq.iris": 3, "predq.other": 0}
    out = decide(cand("q1", QUEUED), cand("q2", QUEUED, model="other"), lengths=lengths)
    assert verdicts(out) == {"q1": Verdict.IN_LINE, "q2": Verdict.REDELIVER}
    assert out[1].queue == "predq.other"


def test_a_queued_job_is_redelivered_even_with_a_lease() -> None:
    # Only a running job's lease says a worker predicts it.
    assert verdicts(decide(cand("q", QUEUED, leased=True))) == {"q": Verdict.REDELIVER}


def test_a_running_job_ignores_the_queue_length() -> None:
    assert verdicts(decide(cand("r"), lengths={"predq.iris": 99})) == {"r": Verdict.REDELIVER}


def test_decisions_keep_the_candidates_order() -> None:
    out = decide(cand("a"), cand("b", leased=True), cand("c", status="failed"), cand("d"))
    assert [d.job.job_id for d in out] == ["a", "b", "c", "d"]


def test_only_the_queues_of_still_queued_jobs_are_measured() -> None:
    candidates = [cand("r"), cand("q1", QUEUED), cand("q2", QUEUED, queue="predq.gpu"),
                  cand("q3", QUEUED), cand("left", QUEUED, status="running", model="x"),
                  cand("nomodel", QUEUED, model=None)]
    assert queues_to_measure(candidates, default_queue) == ["predq.iris", "predq.gpu"]
