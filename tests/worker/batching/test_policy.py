"""The flush policy (predq.worker.batching.policy), with a fake clock and no Celery.

Each rule of the adaptive flush, pinned as the consumer relies on it: an idle pool takes a
request at once; a busy pool buffers and arms one timer; the timer flushes only into a free
slot; a freed slot flushes the buffer; the job and row caps force a flush; a flush is cut at
``max_jobs``. And the cost fit (``seconds = a * rows + b``) finds a and b.
"""

from __future__ import annotations

import random

import pytest

from predq.worker.batching.policy import Action, CostModel, Decision, FlushPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(slots: int = 1, max_jobs: int = 4, max_rows: int = 100,
         max_wait_s: float = 0.01) -> tuple[FlushPolicy[str], Clock]:
    clock = Clock()
    return FlushPolicy(max_jobs=max_jobs, max_rows=max_rows, max_wait_s=max_wait_s,
                       slots=slots, clock=clock), clock


def busy(policy: FlushPolicy[str]) -> FlushPolicy[str]:
    for _ in range(policy.slots):
        policy.dispatched()
    return policy


def test_an_arrival_at_an_idle_pool_is_flushed_at_once() -> None:
    policy, _ = make(slots=2)
    assert policy.add("a", 1) == Decision(Action.FLUSH)
    assert policy.take() == [["a"]]
    assert len(policy) == 0 and policy.rows == 0 and not policy.armed


def test_a_free_slot_of_several_takes_the_arrival_at_once() -> None:
    policy, _ = make(slots=2)
    policy.dispatched()
    assert policy.add("a", 1).action is Action.FLUSH


def test_a_busy_pool_buffers_and_arms_one_timer() -> None:
    policy, clock = make(max_wait_s=0.01)
    busy(policy)
    assert policy.add("a", 1) == Decision(Action.ARM, 0.01)
    assert policy.deadline == pytest.approx(100.01)
    clock.now += 0.004
    assert policy.add("b", 1) == Decision(Action.WAIT)  # armed already: no second timer
    assert policy.add("c", 1) == Decision(Action.WAIT)
    assert policy.pending == ["a", "b", "c"] and policy.rows == 3
    assert policy.waited() == pytest.approx(0.004)


def test_the_timer_flushes_into_a_free_slot() -> None:
    policy, _ = make()
    busy(policy)
    policy.add("a", 1)
    policy.released()  # the slot freed, but nobody asked yet
    assert policy.on_timer() is True
    assert not policy.armed
    assert policy.take() == [["a"]]


def test_the_timer_does_not_flush_into_a_busy_pool() -> None:
    policy, _ = make()
    busy(policy)
    policy.add("a", 1)
    assert policy.on_timer() is False
    assert not policy.armed and policy.pending == ["a"]  # kept for the next free slot
    # the next arrival arms a new timer
    assert policy.add("b", 1).action is Action.ARM


def test_the_timer_of_an_emptied_buffer_does_nothing() -> None:
    policy, _ = make()
    busy(policy)
    policy.add("a", 1)
    policy.drain()
    policy.released()
    assert policy.on_timer() is False


def test_a_freed_slot_flushes_the_buffer() -> None:
    policy, _ = make()
    busy(policy)
    policy.add("a", 2)
    policy.add("b", 3)
    assert policy.on_slot_free() is False  # still busy
    policy.released()
    assert policy.on_slot_free() is True
    assert policy.take() == [["a", "b"]]
    assert not policy.armed and policy.rows == 0 and policy.oldest is None
    assert policy.on_slot_free() is False  # nothing left


def test_max_jobs_forces_a_flush_into_a_busy_pool() -> None:
    policy, _ = make(max_jobs=3)
    busy(policy)
    assert [policy.add(x, 1).action for x in "abc"] == [Action.ARM, Action.WAIT, Action.FLUSH]


def test_max_rows_forces_a_flush_into_a_busy_pool() -> None:
    policy, _ = make(max_rows=10)
    busy(policy)
    assert policy.add("a", 6).action is Action.ARM
    assert policy.add("b", 4).action is Action.FLUSH  # 10 rows: at the cap
    assert policy.take() == [["a", "b"]]  # rows decide when, not how the flush is cut
    assert policy.add("big", 50).action is Action.FLUSH


def test_a_flush_is_cut_at_max_jobs() -> None:
    # Arrivals never overfill the buffer (max_jobs forces a flush), so this is the guard for
    # a buffer filled under a larger cap: the cap lowered meanwhile.
    policy, _ = make(max_jobs=16, max_rows=10**9)
    busy(policy)
    items = [f"j{i}" for i in range(10)]
    assert {policy.add(x, 1).action for x in items} == {Action.ARM, Action.WAIT}
    policy.max_jobs = 4
    chunks = policy.take()
    assert chunks == [["j0", "j1", "j2", "j3"], ["j4", "j5", "j6", "j7"], ["j8", "j9"]]
    assert [x for c in chunks for x in c] == items  # arrival order, each item once


def test_a_full_buffer_goes_out_as_one_batch_of_max_jobs() -> None:
    policy, _ = make(max_jobs=256, max_rows=10**9)
    busy(policy)
    actions = [policy.add(f"r{i}", 1).action for i in range(256)]
    assert actions[-1] is Action.FLUSH and Action.FLUSH not in actions[:-1]
    assert [len(c) for c in policy.take()] == [256]


def test_released_never_counts_below_zero() -> None:
    policy, _ = make()
    policy.released()
    assert policy.busy == 0 and policy.free


def test_the_cost_fit_recovers_a_and_b() -> None:
    rng = random.Random(7)
    policy, _ = make()
    for _ in range(200):
        n = rng.randint(1, 2000)
        policy.observe(n, 0.0004 * n + 0.003)
    assert policy.cost.a == pytest.approx(0.0004, rel=1e-6)
    assert policy.cost.b == pytest.approx(0.003, rel=1e-6)
    assert policy.cost.predict(1000) == pytest.approx(0.403, rel=1e-6)


def test_the_cost_fit_tracks_noise_and_change() -> None:
    rng = random.Random(3)
    cost = CostModel(memory=50)
    for _ in range(300):  # the old machine
        n = rng.randint(1, 500)
        cost.observe(n, 0.001 * n + 0.010)
    for _ in range(500):  # a faster one, noisy timings
        n = rng.randint(1, 500)
        cost.observe(n, 0.0002 * n + 0.002 + rng.gauss(0, 0.0002))
    assert cost.a == pytest.approx(0.0002, rel=0.05)
    assert cost.b == pytest.approx(0.002, rel=0.1)


def test_the_cost_fit_waits_for_two_sizes_and_ignores_bogus_times() -> None:
    cost = CostModel()
    assert cost.predict(10) is None
    for _ in range(5):
        cost.observe(10, 0.02)
    assert cost.a is None and cost.b is None  # one size says nothing about a
    cost.observe(20, float("nan"))
    cost.observe(20, -1.0)
    assert cost.observations == 5
    cost.observe(30, 0.04)
    assert cost.a == pytest.approx(0.001) and cost.b == pytest.approx(0.01)


def test_the_cost_fit_stays_non_negative() -> None:
    cost = CostModel()
    cost.observe(10, 0.5)
    cost.observe(1000, 0.1)  # bigger was faster (a warm cache, say): no negative slope
    assert cost.a == 0.0 and cost.b is not None and cost.b > 0


def test_a_hold_buffers_what_would_flush_and_release_says_it_is_due() -> None:
    policy, _ = make(slots=2, max_jobs=64)
    policy.hold()
    assert [policy.add(x, 1).action for x in "abcde"] == [Action.WAIT] * 5
    assert not policy.armed  # a free slot: no timer, the release flushes
    assert policy.on_slot_free() is False and policy.on_timer() is False  # held
    assert policy.release() is True
    assert not policy.holding and not policy.due
    # a group into 2 free slots is spread over both
    assert policy.take() == [["a", "b", "c"], ["d", "e"]]


def test_a_release_with_nothing_due_does_not_flush() -> None:
    policy, clock = make(slots=1)
    busy(policy)
    policy.hold()
    assert policy.add("a", 1) == Decision(Action.ARM, 0.01)  # a busy pool: timer as usual
    assert policy.add("b", 1).action is Action.WAIT
    assert policy.release() is False
    assert policy.pending == ["a", "b"] and policy.armed
    clock.now += 0.01
    policy.released()
    assert policy.on_timer() is True  # after the hold, the rules are the usual ones
    assert policy.take() == [["a", "b"]]
    assert policy.release() is False  # not holding, nothing buffered


def test_a_release_of_an_emptied_buffer_does_not_flush() -> None:
    policy, _ = make(slots=2)
    policy.hold()
    policy.add("a", 1)
    policy.drain()  # shutdown returned it meanwhile
    assert policy.release() is False


def test_a_caps_flush_while_holding_is_due_at_release_and_cut_at_max_jobs() -> None:
    policy, _ = make(slots=2, max_jobs=3)
    busy(policy)
    policy.hold()
    assert [policy.add(x, 1).action for x in "abcdefg"] == [Action.ARM] + [Action.WAIT] * 6
    assert policy.release() is True
    assert policy.take() == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


def test_take_spreads_over_the_free_slots_only_when_max_jobs_makes_fewer_batches() -> None:
    policy, _ = make(slots=2, max_jobs=4)
    for x in "ab":
        policy.add(x, 1)
    assert policy.take() == [["a"], ["b"]]
    for x in "abcdefghij":  # 3 chunks of max_jobs >= 2 free slots: the usual cut
        policy.add(x, 1)
    assert [len(c) for c in policy.take()] == [4, 4, 2]
    policy.dispatched()  # one free slot: no spread
    for x in "abc":
        policy.add(x, 1)
    assert policy.take() == [["a", "b", "c"]]
    policy.released()
    assert policy.take() == []
