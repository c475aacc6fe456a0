"""The retry policy and the delivery state machine, as pure functions."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from predq.shared.jobstore.status import DeliveryState
from predq.shared.webhooks.signing import (
    JITTER,
    RETRY_AFTER_CAP_S,
    Outcome,
    next_delay,
    parse_retry_after,
)
from predq.shared.webhooks.state import (
    DELIVERED,
    DELIVERING,
    MAX_ATTEMPTS_KEPT,
    PENDING,
    begin,
    initial,
    public,
    record,
    reopen,
)

SCHEDULE = [0, 5, 300, 1800, 7200]
JOB = "8eee5320-1f83-442d-b857-81b5476c3612"
EV = "job.completed"


# -- the policy ---------------------------------------------------------------------------


def test_delays_follow_the_schedule_with_jitter() -> None:
    rng = random.Random(1)
    for attempts in range(1, len(SCHEDULE)):
        for _ in range(50):
            d = next_delay(attempts, SCHEDULE, None, rng)
            assert d is not None
            base = SCHEDULE[attempts]
            assert base * (1 - JITTER) <= d <= base * (1 + JITTER)
    assert len({next_delay(2, SCHEDULE, None, rng) for _ in range(20)}) > 1  # jittered


def test_attempts_are_bounded_by_the_schedule() -> None:
    assert next_delay(len(SCHEDULE), SCHEDULE) is None
    assert next_delay(1, [0]) is None


def test_retry_after_is_a_floor_and_capped() -> None:
    assert next_delay(1, [0, 0.2], retry_after=2.0) == 2.0
    assert next_delay(1, [0, 0.2], retry_after=10**9) == RETRY_AFTER_CAP_S
    d = next_delay(1, [0, 600], retry_after=2.0, rng=random.Random(0))
    assert d is not None and d >= 600 * (1 - JITTER)


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("2", now) == 2.0
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30, abs=1)
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


@pytest.mark.parametrize(("outcome", "verdict"), [
    (Outcome(status_code=200), "delivered"), (Outcome(status_code=204), "delivered"),
    (Outcome(status_code=503), "retry"), (Outcome(status_code=500), "retry"),
    (Outcome(status_code=408), "retry"), (Outcome(status_code=429), "retry"),
    (Outcome(status_code=410), "gone"), (Outcome(status_code=400), "final"),
    (Outcome(status_code=404), "final"), (Outcome(status_code=302), "final"),
    (Outcome(error="Timeout", retryable_error=True), "retry"),
    (Outcome(error="ConnectError", retryable_error=True), "retry"),
    (Outcome(error="BlockedAddress"), "final"),
])
def test_outcomes_are_classified(outcome: Outcome, verdict: str) -> None:
    assert outcome.verdict == verdict


# -- the state machine -------------------------------------------------------------------


def started(now: float = 100.0) -> dict[str, object]:
    state, why = begin(None, JOB, EV, now, 70, SCHEDULE)
    assert why == "go" and state is not None and state["state"] == DELIVERING
    return state


def test_a_retry_is_scheduled_then_the_early_duplicate_dropped() -> None:
    state, due, dead = record(started(), Outcome(status_code=503), 100, 101, SCHEDULE,
                              random.Random(0))
    assert state["state"] == PENDING and not dead and due is not None and due > 101
    assert state["next_at"] == due and state["tries"] == 1
    assert begin(state, JOB, EV, due - 1, 70, SCHEDULE) == (None,
                                                           "the next attempt is not due yet")
    again, why = begin(state, JOB, EV, due, 70, SCHEDULE)
    assert why == "go" and again is not None and again["state"] == DELIVERING


def test_duplicates_of_an_in_flight_or_finished_delivery_are_dropped() -> None:
    state = started(100)
    assert begin(state, JOB, EV, 150, 70, SCHEDULE)[1] == "an attempt is in flight"
    done, due, _ = record(state, Outcome(status_code=200), 100, 101, SCHEDULE)
    assert done["state"] == DELIVERED and due is None
    assert begin(done, JOB, EV, 200, 70, SCHEDULE) == (None, "already delivered")


@pytest.mark.parametrize(("outcome", "detail"), [
    (Outcome(status_code=410), "410 Gone"), (Outcome(status_code=400), "HTTP 400"),
    (Outcome(error="BlockedAddress: x"), "BlockedAddress"),
])
def test_final_outcomes_dead_letter_at_once(outcome: Outcome, detail: str) -> None:
    state, due, dead = record(started(), outcome, 100, 101, SCHEDULE)
    assert state["state"] == DeliveryState.FAILED and dead and due is None
    assert detail in str(state["detail"])


def test_exhausting_the_schedule_dead_letters() -> None:
    state = started()
    for i in range(len(SCHEDULE)):
        state, due, dead = record(state, Outcome(status_code=500), 0, 0, SCHEDULE)
        if i < len(SCHEDULE) - 1:
            assert not dead
            state, _ = begin(state, JOB, EV, 10**9, 70, SCHEDULE)
            assert state is not None
    assert dead and state["state"] == DeliveryState.FAILED
    assert state["detail"] == "gave up after 5 attempts"
    assert [a["status_code"] for a in state["attempts"]] == [500] * 5


def test_a_lost_attempt_counts_and_can_exhaust() -> None:
    state = {**started(100), "tries": len(SCHEDULE) - 1}
    new, why = begin(state, JOB, EV, 1000, 70, SCHEDULE)  # lease ran out long ago
    assert why == "dead" and new is not None and new["state"] == DeliveryState.FAILED
    assert new["attempts"][-1]["error"].startswith("LostAttempt")


def test_redelivery_reopens_with_the_same_id_and_a_fresh_round() -> None:
    failed, _, _ = record(started(), Outcome(status_code=410), 100, 101, SCHEDULE)
    again = reopen(failed, JOB, EV)
    assert again["state"] == PENDING and again["tries"] == 0
    assert again["webhook_id"] == failed["webhook_id"] == initial(JOB, EV)["webhook_id"]
    assert again["attempts"] == failed["attempts"]
    with pytest.raises(ValueError, match="already delivering"):
        reopen(started(), JOB, EV)


def test_the_attempt_log_is_bounded() -> None:
    state = started()
    for _ in range(MAX_ATTEMPTS_KEPT + 10):
        state, _, _ = record(state, Outcome(status_code=500), 0, 0, [0] * 100)
        state = {**state, "state": DELIVERING}
    assert len(state["attempts"]) == MAX_ATTEMPTS_KEPT
    assert state["n_attempts"] == MAX_ATTEMPTS_KEPT + 10


def test_the_public_view_hides_internals() -> None:
    state, _, _ = record(started(), Outcome(status_code=503, duration_ms=12.34), 100, 101,
                         SCHEDULE)
    shown = public(state, "succeeded", EV)
    assert set(shown) == {"state", "webhook_id", "attempts", "next_attempt_at", "detail"}
    assert shown["attempts"] == [{"at": "1970-01-01T00:01:40.000000Z", "status_code": 503,
                                  "error": None, "duration_ms": 12.3}]
    assert public(None, "running", None)["state"] == "pending"
    assert public(None, "succeeded", EV)["state"] == "pending"
    assert public(None, "cancelled", None)["state"] == "skipped"
