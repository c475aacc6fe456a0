"""kombu's Redis transport, fetching several messages per round trip.

kombu's Redis channel takes one message per ``BRPOP`` and then records it as unacknowledged
with a pipeline of its own (``QoS.append``: ``ZADD unacked_index`` + ``HSET unacked``): two
round trips per message on the consumer's single thread, before any batching starts. This
channel keeps the ``BRPOP`` (the worker still blocks on Redis when the queues are empty) and,
once it returned a message, runs one script (:data:`FETCH_LUA`) that

- records that message as unacknowledged, exactly as ``QoS.append`` would;
- pops up to ``fetch_max - 1`` more (never more than the channel's prefetch window has room
  for: ``qos.can_consume_max_estimate()``), of the queues in ``fetch_queues`` (the worker's
  predict queues; the batch lane and no-ack queues are left to kombu's path, one message
  per ``BRPOP``), from the same keys in the same order as the
  ``BRPOP`` (every priority sub-list ``<queue>\\x06\\x16<n>`` of every queue, highest
  priority first, queues in the round-robin cycle's order), and records each of them the
  same way, atomically with its pop.

So a burst of N messages costs 2 round trips instead of 2N, and a message popped by the
script is never out of Redis' sight: it is in the ``unacked`` hash from the moment it leaves
its list, so kombu's visibility-timeout restore, its restore of a closing channel's messages,
acks, rejects and requeues all work on it unchanged (they read the same hash). The messages
are then delivered one by one, as kombu delivers them (a delivery whose tag the script
already recorded skips ``QoS.append``'s Redis pipeline and keeps its local bookkeeping). If a
delivery raises, the messages fetched after it are given back to their queue at once.

A fetch of two or more messages is delivered inside :func:`predq.worker.batching.group.
delivering`, so that the micro-batching consumer takes the group as one arrival: it buffers
the messages as they come and flushes once when the group ends (the end runs in a
``finally``, also when a delivery raised). A lone message is delivered outside any group and
flushed at once, as kombu's channel would have it.

The script does not rewrite a message: the ``unacked`` entry is the popped JSON text as it
was, wrapped in kombu's ``[message, exchange, routing_key]``. A message whose envelope it
cannot read (no ``properties.delivery_tag`` / ``delivery_info``) is pushed back where it was
and the fetch stops there, so kombu's own path handles it. If Redis refuses the script
(``ResponseError``: no Lua, say), the channel falls back to kombu's path for good. With
``global_keyprefix`` (which predq never sets), or ``fetch_max <= 1``, it is kombu's channel.

Selected by ``predq.worker.app`` (``broker_transport``) for ``redis://`` and ``sentinel://``
URLs; ``rediss://`` keeps kombu's stock transport (kombu derives its TLS default from that
scheme). Written against kombu 5.7 (``_brpop_read`` below follows its version line by line,
plus the fetch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from queue import Empty
from typing import Any

from kombu.transport import redis as kredis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from predq.worker.batching import group

log = logging.getLogger("predq.worker.transport")

#: KEYS: unacked_index, unacked, then the queue keys in BRPOP order.
#: ARGV: now (the unacked index score), how many more to pop, the message BRPOP returned.
#: Returns {1 if that message was recorded else 0, key index, message, key index, message...}
#: (key index 1 = KEYS[3]).
FETCH_LUA = """
local function record(item)
  local ok, msg = pcall(cjson.decode, item)
  if not ok or type(msg) ~= 'table' then return false end
  local props = msg['properties']
  if type(props) ~= 'table' then return false end
  local tag, info = props['delivery_tag'], props['delivery_info']
  if type(tag) ~= 'string' or type(info) ~= 'table' then return false end
  local ex, rk = info['exchange'], info['routing_key']
  if type(ex) ~= 'string' or type(rk) ~= 'string' then return false end
  redis.call('ZADD', KEYS[1], ARGV[1], tag)
  redis.call('HSET', KEYS[2], tag,
             '[' .. item .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
  return true
end
local out = {0}
if ARGV[3] ~= '' and record(ARGV[3]) then out[1] = 1 end
local n = tonumber(ARGV[2])
local i = 3
while n > 0 and i <= #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if not item then
    i = i + 1
  elseif record(item) then
    out[#out + 1] = i - 2
    out[#out + 1] = item
    n = n - 1
  else
    redis.call('RPUSH', KEYS[i], item)
    break
  end
end
return out
"""


class QoS(kredis.QoS):
    """kombu's Redis QoS; a message the fetch script already recorded skips the pipeline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tags recorded in Redis by the fetch script and not appended locally yet.
        self.prerecorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.prerecorded:
            self.prerecorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # local state only
        else:
            super().append(message, delivery_tag)


class MultiFetch:
    """The fetch, mixed into kombu's Redis channel and its Sentinel channel."""

    QoS = QoS
    #: Messages per round trip, at most (transport option ``fetch_max``; <= 1: kombu's path).
    fetch_max = 1
    #: The queues fetched from several at a time (transport option ``fetch_queues``; None:
    #: all). A message of another queue (the batch lane, which keeps its own budget of held
    #: messages and pauses its queues when full) is taken by kombu's path, alone.
    fetch_queues: Any = None

    _fetch_script: Any = None
    _fetch_client: Any = None
    _fetch_off = False
    #: Queues consumed without acknowledgements (control replies, say): kombu never records
    #: their messages as unacknowledged, so neither does the fetch, and it pops none of them.
    _no_ack_queues: frozenset[str] = frozenset()

    # Attributes of kombu's channel used here (for the type checker).
    client: Any
    connection: Any
    connection_errors: Any
    ResponseError: Any
    sep: str
    priority_steps: Any
    global_keyprefix: str
    ack_emulation: bool
    active_queues: list[str]
    unacked_key: str
    unacked_index_key: str
    _queue_cycle: Any
    _in_poll: Any

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues = self._no_ack_queues | {queue}
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> Any:
        if (self._fetch_off or int(self.fetch_max) <= 1 or self.global_keyprefix
                or not self.ack_emulation):
            return super()._brpop_read(**options)  # type: ignore[misc]
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest_key, item = dest__item
                dest = bytes_to_str(dest_key).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                self._deliver_fetched(dest, item)
                return True
            else:
                raise Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]

    # -- the fetch --------------------------------------------------------------------------

    def _fetch_keys(self) -> tuple[list[str], list[str]]:
        """The keys BRPOP would read next, in its order, and the queue of each."""
        queues = [q for q in self._queue_cycle.consume(len(self.active_queues))
                  if self._fetchable(q)]
        keys, owners = [], []
        for pri in self.priority_steps:
            for queue in queues:
                keys.append(self._q_for_pri(queue, pri))  # type: ignore[attr-defined]
                owners.append(queue)
        return keys, owners

    def _fetchable(self, queue: str) -> bool:
        return queue not in self._no_ack_queues and (
            self.fetch_queues is None or queue in self.fetch_queues)

    def _fetch_budget(self, qos: Any) -> int:
        """How many more messages may be fetched besides the one BRPOP returned."""
        room = qos.can_consume_max_estimate()
        fetch_max = int(self.fetch_max)
        limit = fetch_max if room is None else min(fetch_max, room)
        return max(0, limit - 1)

    def _run_fetch(self, item: bytes, keys: list[str], more: int, now: float) -> list[Any]:
        if self._fetch_script is None:
            self._fetch_client = self._create_client()  # type: ignore[attr-defined]
            self._fetch_script = self._fetch_client.register_script(FETCH_LUA)
        return list(self._fetch_script(
            keys=[self.unacked_index_key, self.unacked_key, *keys],
            args=[repr(now), more, item], client=self._fetch_client))

    def _deliver_fetched(self, dest: str, item: bytes) -> None:
        qos: Any = self.qos  # type: ignore[attr-defined]
        keys, owners = self._fetch_keys()
        more = self._fetch_budget(qos) if keys else 0
        first = loads(bytes_to_str(item))
        if not self._fetchable(dest):  # kombu's path: alone, recorded by QoS.append
            self._deliver_all(qos, [(dest, first)])
            return
        try:
            reply = self._run_fetch(item, keys, more, time.time())
        except self.ResponseError as e:
            # Redis refused the script (no scripting on this server, say): kombu's path,
            # for this message (not recorded yet) and from now on.
            log.warning("the multi-message fetch script was refused (%s): one message per "
                        "BRPOP from now on", e)
            self._fetch_off = True
            reply = [0]
        fetched: list[tuple[str, Any]] = [(dest, first)]
        if reply[0] == 1:
            qos.prerecorded.add(first["properties"]["delivery_tag"])
        for idx, raw in zip(reply[1::2], reply[2::2], strict=True):
            payload = loads(bytes_to_str(raw))
            qos.prerecorded.add(payload["properties"]["delivery_tag"])
            fetched.append((owners[int(idx) - 1], payload))
        self._deliver_all(qos, fetched)

    def _deliver_all(self, qos: Any, fetched: list[tuple[str, Any]]) -> None:
        if len(fetched) > 1:  # one arrival for the batching policy (see group.py)
            with group.delivering():
                self._deliver_each(qos, fetched)
        else:
            self._deliver_each(qos, fetched)

    def _deliver_each(self, qos: Any, fetched: list[tuple[str, Any]]) -> None:
        done = 0
        try:
            for queue, payload in fetched:
                done += 1
                self.connection._deliver(payload, queue)
                if done > 1:
                    self._queue_cycle.rotate(queue)
        finally:
            if done < len(fetched):  # a delivery raised: give the rest back now
                self._give_back([p for _, p in fetched[done:]], qos)
            qos.prerecorded.clear()

    def _give_back(self, payloads: Sequence[Any], qos: Any) -> None:
        # Each goes back to the end BRPOP reads from: the last one first, so that the next
        # fetch takes them in their order again.
        for payload in reversed(payloads):
            tag = payload["properties"]["delivery_tag"]
            if tag not in qos.prerecorded:
                continue  # never recorded by the script: nothing of it is in Redis
            try:
                qos.restore_by_tag(tag, leftmost=False)
            except Exception as e:  # the visibility timeout restores it
                log.warning("could not give back fetched message %s: %r", tag, e)


class Channel(MultiFetch, kredis.Channel):
    """kombu's Redis channel with :class:`MultiFetch`."""

    from_transport_options = (  # type: ignore[assignment]
        *kredis.Channel.from_transport_options, "fetch_max", "fetch_queues")


class SentinelChannel(MultiFetch, kredis.SentinelChannel):
    """kombu's Sentinel channel with :class:`MultiFetch`."""

    from_transport_options = (  # type: ignore[assignment]
        *kredis.SentinelChannel.from_transport_options, "fetch_max", "fetch_queues")


class Transport(kredis.Transport):
    Channel = Channel


class SentinelTransport(kredis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(url: str) -> str | None:
    """The ``broker_transport`` for a broker URL (None: kombu's own for that scheme)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "redis":
        return f"{__name__}:Transport"
    if scheme == "sentinel":
        return f"{__name__}:SentinelTransport"
    return None
