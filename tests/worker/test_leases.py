"""Claim leases against a real Redis: a job is predicted by at most one delivery at a time.

A duplicate delivery (kombu restoring a live worker's unacknowledged message, the reaper
republishing a job whose message sits prefetched) arrives while another delivery predicts
the job. Its claim must skip it, without predicting it or counting a delivery; only a
redelivery after the lease is gone (released, or lapsed with its dead worker) counts.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from predq.demo import iris_sample_rows
from predq.shared.jobstore.keys import Keys
from predq.worker.batching.consumer import PredictBatches
from predq.worker.reaper import reap
from tests.worker.test_predict import env_, job, submit  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def claim(e: dict[str, Any], job_id: str, token: str, lease_s: float = 30.0) -> str:
    s = e["settings"]
    (code, *_), = e["scripts"].claim([job_id], ["iris"], s.max_deliveries, [2],
                                     s.result_ttl_s, tokens=[token], lease_s=lease_s)
    return code.decode()


def deliveries(e: dict[str, Any], job_id: str) -> int:
    return int(job(e, job_id).get("deliveries", 0))


def wait_gone(e: dict[str, Any], key: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if not e["client"].exists(key):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise AssertionError(f"{key} still exists after {timeout} s")


def test_a_second_claim_of_a_running_job_is_skipped_while_its_lease_lives(
        env_: dict[str, Any]) -> None:  # noqa: F811
    keys = Keys(env_["settings"].key_prefix)
    submit(env_, "iris", iris_sample_rows(2), "j")
    assert claim(env_, "j", "A") == "ok"
    assert env_["client"].get(keys.lease("j")) == b"A"
    # a duplicate message: another delivery holds the live lease
    assert claim(env_, "j", "B") == "leased"
    assert claim(env_, "j", "C") == "leased"
    assert deliveries(env_, "j") == 1 and job(env_, "j")["status"] == b"running"
    # the same delivery again (its batch lost its pool process and runs again): counted
    assert claim(env_, "j", "A") == "ok"
    assert deliveries(env_, "j") == 2
    # renewals extend only the holder's lease
    assert env_["scripts"].renew([("j", "B")], 30.0) == 0
    assert env_["scripts"].renew([("j", "A")], 30.0) == 1
    # given back (requeued): the next delivery is a real one
    assert env_["scripts"].release([("j", "B")]) == 0
    assert env_["scripts"].release([("j", "A")]) == 1
    assert claim(env_, "j", "B", lease_s=0.05) == "ok"
    assert deliveries(env_, "j") == 3
    # a dead worker's lease lapses: the restored message is a real redelivery
    wait_gone(env_, keys.lease("j"))
    assert claim(env_, "j", "C") == "ok"
    assert deliveries(env_, "j") == 4


def test_a_duplicate_in_the_same_batch_is_predicted_once_and_keeps_its_success(
        env_: dict[str, Any]) -> None:  # noqa: F811
    keys = Keys(env_["settings"].key_prefix)
    req = submit(env_, "iris", iris_sample_rows(3), "d1")
    other = submit(env_, "iris", iris_sample_rows(2, seed=1), "d2")
    report = env_["predictor"].run("b1", [(*req, "t1"), (*other, "t2"), (*req, "t3")])
    assert report.duplicates == [2]
    assert report.outcomes == {"d1": ("SUCCESS", report.outcomes["d1"][1], None),
                               "d2": ("SUCCESS", report.outcomes["d2"][1], None)}
    assert report.n_jobs == 2 and report.n_rows == 5  # the copy was not predicted
    h = job(env_, "d1")
    assert h["status"] == b"succeeded"
    assert int(h["deliveries"]) == 1 and int(h["predictions"]) == 1
    assert not env_["client"].exists(keys.lease("d1"))  # the finish dropped the lease
    # a late duplicate of the finished job: skipped, nothing changes
    again = env_["predictor"].run("b2", [(*req, "t4")])
    assert again.duplicates == [0] and again.outcomes == {} and again.n_jobs == 0
    h2 = job(env_, "d1")
    assert (h2["deliveries"], h2["predictions"], h2["outputs"]) == \
        (h["deliveries"], h["predictions"], h["outputs"])


def test_predictions_count_every_predict_run_even_a_discarded_one(
        env_: dict[str, Any]) -> None:  # noqa: F811
    e = env_
    req = submit(e, "iris", iris_sample_rows(2), "p1")
    bad = submit(e, "iris", iris_sample_rows(2), "p2")
    e["client"].hset(Keys(e["settings"].key_prefix).job("p2"), "inputs", b"not codec bytes")
    e["predictor"].run("b1", [req, bad])
    assert int(job(e, "p1")["predictions"]) == 1
    assert job(e, "p2")["status"] == b"failed" and "predictions" not in job(e, "p2")
    # a second prediction of a job (its first lease lapsed, say) is counted though the
    # finish discards its result
    s = e["scripts"]
    s.finish([("p1", "succeeded", "outputs", b"[]", "", b"")], 60, predicted=[True])
    assert int(job(e, "p1")["predictions"]) == 2
    assert job(e, "p1")["outputs"] != b"[]"
    # never for a job whose record is gone (no hash is created again)
    s.finish([("gone", "succeeded", "outputs", b"[]", "", b"")], 60)
    assert not e["client"].exists(Keys(e["settings"].key_prefix).job("gone"))


def test_the_reaper_leaves_a_job_with_a_live_lease_alone(env_: dict[str, Any]) -> None:  # noqa: F811
    e = env_
    keys = Keys(e["settings"].key_prefix)
    settings = e["settings"].model_copy(update={"stuck_after_s": 1.0})
    submit(e, "iris", iris_sample_rows(2), "r1")
    submit(e, "iris", iris_sample_rows(2), "r2")
    assert claim(e, "r1", "A") == "ok"
    assert claim(e, "r2", "B", lease_s=0.05) == "ok"
    wait_gone(e, keys.lease("r2"))  # r2's worker died: its lease lapsed
    queue = settings.default_queue
    e["client"].delete(queue)
    later = time.time() + 5
    assert reap(e["client"], keys, settings, now=later) == ["r2"]
    assert e["client"].llen(queue) == 1
    # r1 is still leased: looked at again only stuck_after_s later
    assert e["client"].zscore(keys.running(), "r1") == pytest.approx(later)
    assert claim(e, "r2", "C") == "ok" and deliveries(e, "r2") == 2


class _Req:
    """The part of a Celery request the consumer's lease bookkeeping uses."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self.args = [job_id, "iris", "1", 1]


class _Batcher(PredictBatches):
    batch_time_limit = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.renewed: list[list[tuple[str, str]]] = []
        self.released: list[list[tuple[str, str]]] = []
        self.down = False

    def renew_leases(self, leases: list[tuple[str, str]]) -> None:
        self.renewed.append(sorted(leases))

    def release_leases(self, leases: list[tuple[str, str]]) -> bool:
        if self.down:
            raise ConnectionError("Redis is down")
        self.released.append(sorted(leases))
        return True


def test_the_consumer_renews_the_leases_of_its_jobs_in_flight_only() -> None:
    b = _Batcher()
    reqs = [_Req("a"), _Req("b")]
    payload = b._leased(reqs)
    tokens = [p[4] for p in payload]
    assert len(set(tokens)) == 2 and [p[:4] for p in payload] == [
        ("a", "iris", "1", 1), ("b", "iris", "1", 1)]
    assert b._leased(reqs[:1])[0][4] == tokens[0]  # the same message keeps its token
    b._renew()
    assert b.renewed == [sorted([("a", tokens[0]), ("b", tokens[1])])]
    # a batch whose callbacks never come stops being renewed after twice its hard limit
    b._leases[tokens[1]] = ("b", time.monotonic() - 1)
    b._renew()
    assert b.renewed[-1] == [("a", tokens[0])]
    # a message goes back to the queue only once its lease is released
    assert b._releasable(reqs[:1]) == reqs[:1]
    assert b.released == [[("a", tokens[0])]]
    b.down = True
    assert b._releasable(reqs[:1]) == []  # left unacknowledged: kombu restores it later
