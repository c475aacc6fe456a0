"""Batch records in Redis: create, read, list, cancel, and the chunk bookkeeping.

A batch is one hash (``Keys.batch``) plus the set of its finished chunk numbers
(``Keys.batch_done_chunks``). Every status change is a Lua script, so a cancel, a chunk's
finish and a failure are each atomic, and a chunk that runs twice (its worker was killed
after writing its part) is counted once. The API uses an asyncio client and the worker a
blocking one; :class:`BatchScripts` calls return whatever the client returns.

Statuses: ``queued`` (created; the split task is queued), ``running`` (the first chunk or
the split started), then ``succeeded``, ``failed`` or ``cancelled``. ``validating`` is never
stored: the columns are checked before the batch is created. ``expired`` is what a batch's
view says once its output files have expired.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import task_message
from predq.shared.jobstore.status import BATCH_TERMINAL, BatchStatus
from predq.shared.lua import lua_script
from predq.shared.webhooks.state import public

SPLIT_TASK = "predq.batch_split"
CHUNK_TASK = "predq.batch_chunk"

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    BatchStatus.QUEUED, BatchStatus.RUNNING, BatchStatus.SUCCEEDED, BatchStatus.FAILED,
    BatchStatus.CANCELLED)
TERMINAL = BATCH_TERMINAL
#: The webhook event each terminal status sends.
EVENT_FOR_STATUS = {SUCCEEDED: "batch.completed", FAILED: "batch.failed"}
EVENTS = ("batch.completed", "batch.failed")

FIELDS = ("status", "owner", "model", "version", "sha256", "input_file_id", "output_file_id",
          "error_file_id", "id_column", "on_error", "output_format", "input_format",
          "webhook", "metadata", "created_at", "started_at", "finished_at", "expires_at",
          "total_rows", "done_rows", "failed_rows", "chunks_total", "chunks_done", "error",
          "webhook_state", "queue", "columns", "chunk_rows")
_JSON = {"webhook", "metadata", "error", "webhook_state", "columns"}
_INT = {"total_rows", "done_rows", "failed_rows", "chunks_total", "chunks_done", "chunk_rows"}
_FLOAT = {"created_at", "started_at", "finished_at", "expires_at"}

_CREATE = lua_script(__file__, "create")  # lua/create.lua: KEYS, ARGV, returns

_START = lua_script(__file__, "start")  # lua/start.lua: KEYS, ARGV, returns

_FINISH = lua_script(__file__, "finish")  # lua/finish.lua: KEYS, ARGV, returns

_CANCEL = lua_script(__file__, "cancel")  # lua/cancel.lua: KEYS, ARGV, returns


class BatchScripts:
    """The batch scripts bound to one Redis client (sync or asyncio)."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._create = client.register_script(_CREATE)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    def create(self, batch_id: str, fields: dict[str, Any], *, owner: str, queue: str,
               message: bytes, expire_at: float, idempotency_key: str | None,
               fingerprint: str) -> Any:
        flat: list[Any] = []
        for k, v in fields.items():
            if v is not None:
                flat += [k, v]
        idem = self.keys.batch_idempotency(owner, idempotency_key) if idempotency_key else ""
        return self._create(
            keys=[self.keys.batch(batch_id), idem, self.keys.batches_of(owner), queue,
                  self.keys.files_expiry()],
            args=[batch_id, int(expire_at) + 1, message, fingerprint, fields["created_at"],
                  *flat])

    def start(self, batch_id: str) -> Any:
        return self._start(keys=[self.keys.batch(batch_id)], args=[time.time()])

    def finish_chunk(self, batch_id: str, k: int, ok_rows: int, failed_rows: int, *,
                     failure: bytes = b"", webhook_queue: str = "", completed: bytes = b"",
                     failed: bytes = b"") -> Any:
        return self._finish(
            keys=[self.keys.batch(batch_id), self.keys.batch_done_chunks(batch_id)],
            args=[k, ok_rows, failed_rows, time.time(), failure, self.keys.done_channel(),
                  batch_id, webhook_queue, completed, failed])

    def fail(self, batch_id: str, failure: bytes, *, webhook_queue: str = "",
             failed: bytes = b"") -> Any:
        """Fail the batch outside any chunk (the split could not read the file)."""
        return self.finish_chunk(batch_id, -1, 0, 0, failure=failure,
                                 webhook_queue=webhook_queue, failed=failed)

    def cancel(self, batch_id: str) -> Any:
        return self._cancel(keys=[self.keys.batch(batch_id)],
                            args=[time.time(), self.keys.done_channel(), batch_id])


def decode(raw: list[bytes | None]) -> dict[str, Any] | None:
    """A batch hash read with HMGET(FIELDS), decoded; None when it does not exist."""
    if raw[0] is None:
        return None
    out: dict[str, Any] = {}
    for name, value in zip(FIELDS, raw, strict=True):
        if value is None or value == b"":
            out[name] = None
        elif name in _JSON:
            out[name] = orjson.loads(value)
        elif name in _INT:
            out[name] = int(value)
        elif name in _FLOAT:
            out[name] = float(value)
        else:
            out[name] = value.decode()
    return out


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from predq.shared.batchfiles.filestore import iso

    return iso(ts)


def progress(b: dict[str, Any], now: float | None = None) -> tuple[float | None, float | None]:
    """(rows_per_second, eta_seconds) from the counts and the start time."""
    now = time.time() if now is None else now
    started = b.get("started_at")
    finished = b.get("finished_at")
    handled = (b.get("done_rows") or 0) + (b.get("failed_rows") or 0)
    if not started or handled == 0:
        return None, None
    elapsed = max(1e-6, (finished or now) - started)
    rate = handled / elapsed
    if b["status"] in TERMINAL:
        return round(rate, 1), 0.0 if b["status"] == SUCCEEDED else None
    total = b.get("total_rows")
    eta = None if total is None else round(max(0, total - handled) / rate, 1)
    return round(rate, 1), eta


def webhook_view(b: dict[str, Any]) -> dict[str, Any] | None:
    spec = b.get("webhook")
    if not spec:
        return None
    event = EVENT_FOR_STATUS.get(b["status"])
    wanted = event if event in spec["events"] else None
    return {"url": spec["url"], "events": spec["events"],
            **public(b.get("webhook_state"), b["status"], wanted)}


def batch_view(b: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A batch as GET /v1/batches/{id} shows it (and as its webhooks carry it)."""
    rate, eta = progress(b, now)
    status = b["status"]
    ended = status in TERMINAL
    has_output = status in (SUCCEEDED, CANCELLED) or (status == FAILED and b["chunks_done"])
    bid = b["id"]
    return {
        "id": bid, "object": "batch", "status": status, "model": b["model"],
        "version": b["version"], "sha256": b["sha256"],
        "counts": {"total": b.get("total_rows"), "done": b.get("done_rows") or 0,
                   "failed": b.get("failed_rows") or 0},
        "chunks": {"total": b.get("chunks_total"), "done": b.get("chunks_done") or 0},
        "rows_per_second": rate, "eta_seconds": eta,
        "created_at": _iso(b["created_at"]), "started_at": _iso(b.get("started_at")),
        "finished_at": _iso(b.get("finished_at")), "expires_at": _iso(b["expires_at"]),
        "input_file_id": b["input_file_id"],
        "output_file_id": b["output_file_id"] if ended and has_output else None,
        "error_file_id": b["error_file_id"] if ended else None,
        "id_column": b.get("id_column"), "on_error": b["on_error"],
        "output_format": b["output_format"],
        "error": b.get("error"), "metadata": b.get("metadata"),
        "webhook": webhook_view(b),
        "links": {"self": f"/v1/batches/{bid}", "wait": f"/v1/batches/{bid}?wait=30",
                  **({"output": f"/v1/files/{b['output_file_id']}/content",
                      "errors": f"/v1/files/{b['error_file_id']}/content"} if ended else {})},
    }


def batch_json(b: dict[str, Any]) -> bytes:
    return orjson.dumps(batch_view(b))


def n_chunks(n_rows: int, chunk_rows: int) -> int:
    return max(1, math.ceil(n_rows / chunk_rows))


def read_sync(client: Any, keys: Keys, batch_id: str) -> dict[str, Any] | None:
    """The batch (blocking client), with ``id``; None when gone."""
    b = decode(client.hmget(keys.batch(batch_id), FIELDS))
    if b is not None:
        b["id"] = batch_id
    return b


def is_batch_id(object_id: str) -> bool:
    return object_id.startswith("batch_")


def split_message(batch_id: str, queue: str) -> bytes:
    """The message of a batch's split task (one per batch; the task id names it)."""
    return task_message(SPLIT_TASK, f"{batch_id}:split", [batch_id], queue)


def chunk_message(batch_id: str, k: int, queue: str) -> bytes:
    """The message of chunk ``k`` of a batch."""
    return task_message(CHUNK_TASK, f"{batch_id}:{k}", [batch_id, k], queue)


class AsyncBatches:
    """The API's side of batch records (asyncio Redis)."""

    def __init__(self, client: Any, settings: Any) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.scripts = BatchScripts(client, self.keys)

    async def create(self, batch_id: str, fields: dict[str, Any], *, owner: str,
                     idempotency_key: str | None, fingerprint: str) -> tuple[str, bool]:
        """Write the batch and queue its split; returns (batch_id, created). With an
        Idempotency-Key seen before: the earlier batch, or JobConflict for another body."""
        from predq.shared.errors import JobConflict

        queue = fields["queue"]
        got_id, got_fp = await self.scripts.create(
            batch_id, fields, owner=owner, queue=queue,
            message=split_message(batch_id, queue), expire_at=fields["expires_at"],
            idempotency_key=idempotency_key, fingerprint=fingerprint)
        got_id = got_id.decode() if isinstance(got_id, bytes) else got_id
        got_fp = got_fp.decode() if isinstance(got_fp, bytes) else got_fp
        if got_id != batch_id and got_fp != fingerprint:
            raise JobConflict("this Idempotency-Key was already used with a different "
                              "request body")
        return got_id, got_id == batch_id

    async def read(self, batch_id: str, owner: str | None) -> dict[str, Any]:
        """The batch; BatchNotFound when gone, expired or another owner's (one answer)."""
        from predq.shared.batchfiles.filestore import BATCH_ID_RE
        from predq.shared.errors import BatchNotFound

        missing = BatchNotFound(f"no batch {batch_id!r}: it does not exist, or it expired "
                                f"after PREDQ_FILE_TTL_S ({self.settings.file_ttl_s} s)")
        if not BATCH_ID_RE.fullmatch(batch_id):
            raise missing
        b = decode(await self.client.hmget(self.keys.batch(batch_id), FIELDS))
        if b is None or (owner is not None and b["owner"] != owner):
            raise missing
        b["id"] = batch_id
        return b

    async def list(self, owner: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        """The owner's batches, newest first, after the batch ``after`` (a cursor)."""
        index = self.keys.batches_of(owner)
        if after is not None:
            score = await self.client.zscore(index, after)
            if score is None:
                return []
            ids = await self.client.zrevrangebyscore(index, f"({score!r}", "-inf", start=0,
                                                     num=limit)
        else:
            ids = await self.client.zrevrange(index, 0, limit - 1)
        out = []
        stale = []
        for raw_id in ids:
            bid = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            b = decode(await self.client.hmget(self.keys.batch(bid), FIELDS))
            if b is None:
                stale.append(bid)
                continue
            b["id"] = bid
            out.append(b)
        if stale:
            await self.client.zrem(index, *stale)
        return out

    async def cancel(self, batch_id: str, owner: str | None) -> dict[str, Any]:
        from predq.shared.errors import JobConflict

        await self.read(batch_id, owner)
        status = await self.scripts.cancel(batch_id)
        status = status.decode() if isinstance(status, bytes) else status
        if status.startswith("ended:"):
            raise JobConflict(f"batch {batch_id} already ended with status "
                              f"{status.removeprefix('ended:')!r}")
        if status == CANCELLED:
            from predq.shared.observability.metrics import BATCHES_FINISHED

            await BATCHES_FINISHED.inc(self.client, self.keys, status=CANCELLED)
        return await self.read(batch_id, owner)
