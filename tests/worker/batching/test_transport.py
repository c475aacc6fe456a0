"""The multi-message fetch (predq.worker.batching.transport) against a real redis-server.

Each test consumes with kombu itself (a Consumer on a Connection of our transport, as the
worker's consumer does), and compares with kombu's stock Redis transport where the rule is
"the same as kombu": delivery order across priorities, what an unacknowledged message looks
like in Redis, what a closing channel gives back. The fetch's own bookkeeping (its budget,
giving back what a failed delivery left) is pinned with stand-ins.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue

from predq.redis_server import RedisServer
from predq.shared.jobstore.messages import predict_message
from predq.worker.batching import group, transport

OURS = "predq.worker.batching.transport:Transport"
STOCK = "redis"
_names = itertools.count()


@pytest.fixture
def server(start_redis: Callable[..., RedisServer]) -> RedisServer:
    return start_redis()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(server.url)
    yield c
    c.close()


def _queue() -> str:
    return f"q{next(_names)}"


def _push(client: redis.Redis, queue: str, n: int, start: int = 0) -> list[str]:
    """``n`` predict messages LPUSHed as the API publishes them; their job ids."""
    ids = [f"job{start + i}" for i in range(n)]
    for job_id in ids:
        client.lpush(queue, predict_message(job_id, "m", "1", 1, queue))
    return ids


class Taker:
    """A kombu consumer of ``queues`` on a connection of ``kind``."""

    def __init__(self, url: str, kind: str, queues: list[str], prefetch: int = 100,
                 fetch_max: int = 64, no_ack: bool = False,
                 on_message: Callable[[Any], None] | None = None,
                 fetch_queues: list[str] | None = None) -> None:
        self.conn = Connection(url, transport=kind, transport_options={
            "fetch_max": fetch_max, "fetch_queues": fetch_queues})
        self.channel = self.conn.channel()
        self.got: list[Any] = []
        #: The messages each readable BRPOP delivered.
        self.turns: list[list[str]] = []
        self.on_message = on_message
        self.consumer = Consumer(self.channel, queues=[Queue(q, routing_key=q) for q in queues],
                                 callbacks=[self._on], no_ack=no_ack, accept=["json"])
        self.consumer.qos(prefetch_count=prefetch)
        self.consumer.consume()

    def _on(self, body: Any, message: Any) -> None:
        self.got.append(message)
        if self.on_message is not None:
            self.on_message(message)

    def drain(self, rounds: int = 1) -> list[str]:
        for _ in range(rounds):
            before = len(self.got)
            try:
                self.conn.drain_events(timeout=1)
            except TimeoutError:
                break
            finally:
                if len(self.got) > before:
                    self.turns.append([m.headers["id"] for m in self.got[before:]])
        return [m.headers["id"] for m in self.got]

    def close(self) -> None:
        self.conn.close()


def _calls(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"]
            for k, v in client.info("commandstats").items()}


def test_a_burst_is_taken_in_two_round_trips_and_recorded_as_kombu_records_it(
        server: RedisServer, client: redis.Redis) -> None:
    q = _queue()
    ids = _push(client, q, 20)
    taker = Taker(server.url, OURS, [q])
    client.config_resetstat()
    try:
        assert taker.drain() == ids  # all of them, in their order, from one readable BRPOP
        assert taker.turns == [ids]
        calls = _calls(client)
        assert calls.get("brpop") == 1, calls
        assert calls.get("zadd") == 20 and "multi" not in calls, calls  # no QoS.append pipeline
        # each one is in kombu's unacked hash and index, as QoS.append writes them
        assert client.llen(q) == 0
        assert client.hlen("unacked") == 20 and client.zcard("unacked_index") == 20
        for m in taker.got:
            raw, exchange, routing_key = orjson.loads(client.hget("unacked", m.delivery_tag))
            assert raw == m._raw and (exchange, routing_key) == ("", q)
        for m in taker.got:
            m.ack()
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    finally:
        taker.close()


def test_the_prefetch_window_bounds_each_fetch(server: RedisServer,
                                               client: redis.Redis) -> None:
    q = _queue()
    ids = _push(client, q, 20)
    taker = Taker(server.url, OURS, [q], prefetch=5)
    try:
        assert taker.drain() == ids[:5]
        assert client.llen(q) == 15 and client.hlen("unacked") == 5
        for m in taker.got:
            m.ack()
        assert taker.drain() == ids[:10]
        assert client.llen(q) == 10
    finally:
        taker.close()


def test_fetch_max_bounds_each_fetch(server: RedisServer, client: redis.Redis) -> None:
    q = _queue()
    _push(client, q, 20)
    taker = Taker(server.url, OURS, [q], fetch_max=8)
    try:
        taker.drain()
        assert [len(t) for t in taker.turns] == [8] and client.llen(q) == 12
    finally:
        taker.close()


def _order_with(kind: str, url: str, client: redis.Redis) -> list[str]:
    """Deliveries of messages published at priorities 9, 0 and 5 to two queues."""
    a, b = _queue(), _queue()
    with Connection(url, transport=kind) as conn:
        producer = Producer(conn.channel())
        n = 0
        for priority in (9, 0, 5):
            for queue in (a, b):
                for _ in range(3):
                    producer.publish({"n": n}, routing_key=queue, priority=priority,
                                     headers={"id": f"{queue[:1]}-p{priority}-{n}"},
                                     declare=[Queue(queue, routing_key=queue)])
                    n += 1
    taker = Taker(url, kind, [a, b])
    try:
        got = taker.drain(rounds=30)
        assert len(got) == 18, got
        return [g.split("-")[1] for g in got]
    finally:
        taker.close()


def test_priorities_are_taken_in_kombus_order(server: RedisServer, client: redis.Redis) -> None:
    stock = _order_with(STOCK, server.url, client)
    ours = _order_with(OURS, server.url, client)
    assert ours == stock
    assert ours == ["p0"] * 6 + ["p5"] * 6 + ["p9"] * 6  # BRPOP's key order: 0 first


def test_a_closing_channel_gives_every_fetched_message_back(server: RedisServer,
                                                           client: redis.Redis) -> None:
    q = _queue()
    ids = _push(client, q, 10)
    taker = Taker(server.url, OURS, [q])
    assert taker.drain() == ids
    taker.close()  # nothing acknowledged: kombu restores them from the unacked hash
    assert client.hlen("unacked") == 0
    again = Taker(server.url, STOCK, [q])
    try:
        assert sorted(again.drain(rounds=12)) == sorted(ids)
    finally:
        again.close()


def test_the_visibility_timeout_restores_fetched_messages(server: RedisServer,
                                                          client: redis.Redis) -> None:
    """A worker that died holding them: kombu's sweep of old unacked entries brings them
    back (the script's index score is the fetch time, as QoS.append's)."""
    q = _queue()
    ids = _push(client, q, 6)
    taker = Taker(server.url, OURS, [q])
    try:
        assert taker.drain() == ids
        with Connection(server.url, transport=STOCK,
                        transport_options={"visibility_timeout": -1}) as conn:
            conn.channel().qos.restore_visible(num=100, interval=1)
        assert client.hlen("unacked") == 0
        assert sorted(orjson.loads(m)["headers"]["id"] for m in client.lrange(q, 0, -1)) \
            == sorted(ids)
    finally:
        taker.channel.qos._delivered.clear()  # they were given back: nothing to restore
        taker.close()


def test_only_the_fetch_queues_are_taken_several_at_a_time(server: RedisServer,
                                                            client: redis.Redis) -> None:
    """The worker fetches several messages of its predict queues only: the batch lane keeps
    its own budget of held messages, so kombu's path gives it one per BRPOP."""
    predict, lane = _queue(), _queue() + ".batch"
    _push(client, lane, 5)
    _push(client, predict, 5, start=5)
    taker = Taker(server.url, OURS, [lane, predict], fetch_queues=[predict])
    client.config_resetstat()
    try:
        taker.drain(rounds=12)
        got = [m.headers["id"] for m in taker.got]
        assert sorted(got) == [f"job{i}" for i in range(10)]
        # each lane message alone (its own BRPOP, recorded by QoS.append's MULTI/EXEC), the
        # predict queue's five together (one BRPOP, one script)
        assert sorted(len(t) for t in taker.turns) == [1, 1, 1, 1, 1, 5], taker.turns
        assert [f"job{i}" for i in range(5, 10)] in taker.turns
        assert _calls(client).get("multi") == 5
        assert client.hlen("unacked") == 10
    finally:
        taker.close()


def test_no_ack_consumers_record_nothing(server: RedisServer, client: redis.Redis) -> None:
    q = _queue()
    ids = _push(client, q, 5)
    taker = Taker(server.url, OURS, [q], no_ack=True)
    try:
        assert taker.drain(rounds=6) == ids
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    finally:
        taker.close()


def test_a_message_the_script_cannot_read_is_left_to_kombu(server: RedisServer,
                                                          client: redis.Redis) -> None:
    """An envelope whose exchange is not a string: pushed back, then taken by kombu's path."""
    q = _queue()
    _push(client, q, 2)
    odd = orjson.loads(predict_message("odd", "m", "1", 1, q))
    odd["properties"]["delivery_info"]["exchange"] = None
    client.lpush(q, orjson.dumps(odd))
    _push(client, q, 2, start=2)
    taker = Taker(server.url, OURS, [q])
    try:
        assert taker.drain(rounds=4) == ["job0", "job1", "odd", "job2", "job3"]
        assert client.hlen("unacked") == 5  # each recorded, one way or the other
        tag = taker.got[2].delivery_tag
        assert orjson.loads(client.hget("unacked", tag))[1:] == [None, q]
    finally:
        taker.close()


def test_a_delivery_that_raises_gives_the_rest_back_at_once(server: RedisServer,
                                                           client: redis.Redis) -> None:
    q = _queue()
    ids = _push(client, q, 6)

    def boom(message: Any) -> None:
        if message.headers["id"] == "job2":
            raise RuntimeError("boom")

    taker = Taker(server.url, OURS, [q], on_message=boom)
    try:
        with pytest.raises(RuntimeError):
            taker.conn.drain_events(timeout=1)
        assert taker.drain() == ids[:3] + ids[3:]  # the rest, again, in their order
        assert client.llen(q) == 0
    finally:
        taker.close()


class GroupWatch:
    """What each delivery saw of the fetched group, and when the group ended."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.log: list[str] = []
        self.fail_on = fail_on

    def __call__(self, message: Any) -> None:
        job = message.headers["id"]
        if group.active():
            if not any(e.startswith("in ") for e in self.log[self._since():]):
                group.at_end(lambda: self.log.append("end"))
            self.log.append(f"in {job}")
        else:
            self.log.append(f"alone {job}")
        if job == self.fail_on:
            raise RuntimeError("boom")

    def _since(self) -> int:
        ends = [i for i, e in enumerate(self.log) if e == "end"]
        return ends[-1] + 1 if ends else 0


def test_a_fetched_group_is_delivered_inside_one_group_that_ends_after_it(
        server: RedisServer, client: redis.Redis) -> None:
    q = _queue()
    ids = _push(client, q, 4)
    watch = GroupWatch()
    taker = Taker(server.url, OURS, [q], on_message=watch)
    try:
        assert taker.drain() == ids
        assert watch.log == [f"in {i}" for i in ids] + ["end"]
        assert not group.active()
        _push(client, q, 1, start=10)  # a lone message: no group
        taker.drain()
        assert watch.log[-1] == "alone job10"
    finally:
        taker.close()


def test_a_delivery_that_raises_still_ends_its_group(server: RedisServer,
                                                    client: redis.Redis) -> None:
    q = _queue()
    ids = _push(client, q, 5)
    watch = GroupWatch(fail_on="job1")
    taker = Taker(server.url, OURS, [q], on_message=watch)
    try:
        with pytest.raises(RuntimeError):
            taker.conn.drain_events(timeout=1)
        assert watch.log == ["in job0", "in job1", "end"] and not group.active()
        watch.fail_on = None
        assert taker.drain() == ids[:2] + ids[2:]  # the rest came back, again one group
        assert watch.log[3:] == ["in job2", "in job3", "in job4", "end"]
    finally:
        taker.close()


@pytest.mark.parametrize("kind,fetch_max", [(STOCK, 64), (OURS, 1)])
def test_without_the_fetch_messages_are_delivered_alone(server: RedisServer,
                                                       client: redis.Redis, kind: str,
                                                       fetch_max: int) -> None:
    q = _queue()
    ids = _push(client, q, 3)
    watch = GroupWatch()
    taker = Taker(server.url, kind, [q], on_message=watch, fetch_max=fetch_max)
    try:
        assert taker.drain(rounds=5) == ids
        assert watch.log == [f"alone {i}" for i in ids]
    finally:
        taker.close()


def test_the_fetch_budget_follows_the_prefetch_window() -> None:
    class QoS:
        def __init__(self, room: int | None) -> None:
            self.room = room

        def can_consume_max_estimate(self) -> int | None:
            return self.room

    chan = transport.MultiFetch()
    chan.fetch_max = 64
    assert chan._fetch_budget(QoS(None)) == 63  # no prefetch limit: fetch_max in all
    assert chan._fetch_budget(QoS(10)) == 9  # the BRPOP's own message counts
    assert chan._fetch_budget(QoS(1)) == 0
    assert chan._fetch_budget(QoS(0)) == 0
    chan.fetch_max = 4
    assert chan._fetch_budget(QoS(100)) == 3


def test_the_worker_app_selects_the_transport_by_url() -> None:
    assert transport.transport_for("redis://127.0.0.1:6379/0") == OURS
    assert transport.transport_for("sentinel://h:26379;sentinel://g:26379") == \
        "predq.worker.batching.transport:SentinelTransport"
    assert transport.transport_for("rediss://h:6380/0") is None
    assert transport.transport_for("memory://") is None


@pytest.mark.parametrize(("url", "fetch_max", "chosen"), [
    ("redis://127.0.0.1:1/0", 256, OURS),
    ("redis://127.0.0.1:1/0", 1, None),  # PREDQ_WORKER_FETCH_MAX=1: kombu's own transport
    ("rediss://127.0.0.1:1/0", 256, None),
])
def test_the_workers_connection_uses_it(url: str, fetch_max: int, chosen: str | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from predq.shared.settings import Settings
    from predq.worker.app import create_app

    monkeypatch.setenv("PREDQ_REDIS_URL", url)
    app = create_app(Settings(worker_fetch_max=fetch_max, preload_models=False))
    assert app.conf.broker_transport == chosen
    assert app.conf.broker_transport_options["fetch_max"] == fetch_max
    with app.connection_for_read() as conn:  # never connects
        cls = type(conn.transport)
        assert f"{cls.__module__}:{cls.__name__}" == (chosen or
                                                      "kombu.transport.redis:Transport")
