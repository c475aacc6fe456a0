"""The file store: uploaded files, batch chunks and outputs on disk, their records in Redis.

Layout under ``PREDQ_FILES_ROOT`` (a directory the API and every worker share; in
docker-compose, a volume)::

    tmp/<random>.part                 an upload being received (renamed when complete)
    uploads/<file_id>                 an uploaded file, stored decoded (gzip removed)
    batches/<batch_id>/chunks/<k>.arrow   chunk k's input rows (Arrow IPC), from the split
    batches/<batch_id>/parts/<k>.arrow    chunk k's output rows, written atomically
    batches/<batch_id>/errors/<k>.jsonl   chunk k's error lines, written atomically

A file's record is the hash ``Keys.file(id)`` (owner, format, bytes, sha256, columns, rows,
times), which expires with ``PREDQ_FILE_TTL_S``; the id is also scored by its expiry in
``Keys.files_expiry()``, and :func:`sweep` (run by the workers) frees the disk of what
expired. Contracts: an upload is never held in memory (it is streamed to ``tmp/`` in the
chunks the server reads, hashed as it goes, and renamed into place only when complete and
readable); a record never points at a file that is not complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from predq.shared.batchfiles.tabular import FORMATS, BadFile, Format, inspect, sniff
from predq.shared.errors import FileNotFound, InvalidInput, PayloadTooLarge
from predq.shared.jobstore.keys import Keys
from predq.shared.settings import Settings

FILE_ID_RE = re.compile(r"^file_[0-9a-f]{32}$")
BATCH_ID_RE = re.compile(r"^batch_[0-9a-f]{32}$")
_SNIFF_BYTES = 4096
#: Fields of a file record.
FILE_FIELDS = ("owner", "format", "bytes", "sha256", "created_at", "expires_at", "columns",
               "n_rows", "types", "kind", "batch_id", "filename")


def new_file_id() -> str:
    return f"file_{uuid.uuid4().hex}"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class FileStore:
    """Paths of the file store under ``root`` (every id is checked before it becomes one)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def upload(self, file_id: str) -> Path:
        if not FILE_ID_RE.fullmatch(file_id):
            raise FileNotFound(f"no file {file_id!r}")
        return self.root / "uploads" / file_id

    def batch_dir(self, batch_id: str) -> Path:
        if not BATCH_ID_RE.fullmatch(batch_id):
            raise ValueError(f"invalid batch id {batch_id!r}")
        return self.root / "batches" / batch_id

    def chunk(self, batch_id: str, k: int) -> Path:
        return self.batch_dir(batch_id) / "chunks" / f"{k:06d}.arrow"

    def part(self, batch_id: str, k: int) -> Path:
        return self.batch_dir(batch_id) / "parts" / f"{k:06d}.arrow"

    def errors(self, batch_id: str, k: int) -> Path:
        return self.batch_dir(batch_id) / "errors" / f"{k:06d}.jsonl"

    def tmp(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path / f"{uuid.uuid4().hex}.part"

    def remove(self, object_id: str) -> None:
        """Free the disk of a file or a batch (missing is fine)."""
        if FILE_ID_RE.fullmatch(object_id):
            self.upload(object_id).unlink(missing_ok=True)
        elif BATCH_ID_RE.fullmatch(object_id):
            shutil.rmtree(self.batch_dir(object_id), ignore_errors=True)


def write_atomic(path: Path, write: Any) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it into place:
    a process killed meanwhile leaves no partial ``path`` behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class _Receiver:
    """The state of one upload while it streams in."""

    path: Path
    limit: int
    gzip: bool
    size: int = 0
    head: bytes = b""

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256()
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed in finish/abort)
        self.inflate = zlib.decompressobj(wbits=31) if self.gzip else None

    def feed(self, chunk: bytes) -> None:
        if self.inflate is not None:
            try:
                # At most limit+1 decoded bytes per call, so a gzip bomb is cut off early.
                data = self.inflate.decompress(chunk, self.limit - self.size + 1)
                while self.inflate.unconsumed_tail and self.size + len(data) <= self.limit:
                    data += self.inflate.decompress(self.inflate.unconsumed_tail,
                                                    self.limit - self.size + 1)
            except zlib.error as e:
                raise InvalidInput(f"the body is not valid gzip: {e}", errors=[
                    {"loc": ["body"], "msg": f"invalid gzip stream: {e}",
                     "type": "bad_gzip"}]) from e
        else:
            data = chunk
        self._write(data)

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(f"the file exceeds the limit of {self.limit} bytes "
                                  "(PREDQ_MAX_FILE_BYTES)")
        if len(self.head) < _SNIFF_BYTES:
            self.head += data[: _SNIFF_BYTES - len(self.head)]
        self.digest.update(data)
        self.file.write(data)

    def finish(self) -> None:
        if self.inflate is not None:
            self._write(self.inflate.flush())
            if not self.inflate.eof:
                raise InvalidInput("the gzip stream is truncated: it ends before its end "
                                   "marker", errors=[{"loc": ["body"], "type": "bad_gzip",
                                                      "msg": "truncated gzip stream"}])
        self.file.close()

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _bad_file(detail: str, type_: str = "bad_file") -> InvalidInput:
    return InvalidInput(detail, errors=[{"loc": ["body"], "msg": detail, "type": type_}])


class AsyncFiles:
    """File records over an asyncio Redis client, and the streaming upload."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.store = FileStore(settings.files_root)

    async def upload(self, stream: AsyncIterator[bytes], *, fmt: Format, gzip: bool,
                     owner: str, filename: str | None = None) -> dict[str, Any]:
        """Receive a file, check it is the format declared, and record it; its record.

        Raises PayloadTooLarge (413) over the limit and InvalidInput (422) for a body that
        is empty, not its declared format, a truncated gzip stream, or unreadable (ragged
        CSV rows, duplicate column names, a header and no rows), naming what is wrong.
        """
        receiver = _Receiver(self.store.tmp(), self.settings.max_file_bytes, gzip)
        try:
            async for chunk in stream:
                receiver.feed(chunk)
            receiver.finish()
            if receiver.size == 0:
                raise _bad_file("the file is empty", "empty_file")
            looks = sniff(receiver.head)
            if looks != fmt:
                what = f"looks like {looks}" if looks else "is binary, not CSV or JSON Lines"
                raise _bad_file(f"the body {what}, but its Content-Type declares {fmt}",
                                "format_mismatch")
            try:
                info = await asyncio.to_thread(inspect, receiver.path, fmt)
            except BadFile as e:
                raise _bad_file(str(e)) from e
            file_id = new_file_id()
            final = self.store.upload(file_id)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(receiver.path, final)
        except BaseException:
            receiver.abort()
            raise
        now = time.time()
        record = {
            "owner": owner, "format": fmt, "bytes": receiver.size,
            "sha256": receiver.digest.hexdigest(), "created_at": now,
            "expires_at": now + self.settings.file_ttl_s,
            "columns": orjson.dumps(info.columns), "n_rows": info.n_rows,
            "types": orjson.dumps(info.types), "kind": "upload",
            "filename": filename or "",
        }
        await self.save(file_id, record)
        return await self.read(file_id, owner)

    async def save(self, file_id: str, record: dict[str, Any]) -> None:
        key = self.keys.file(file_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: v for k, v in record.items() if v is not None})
            pipe.expireat(key, int(record["expires_at"]) + 1)
            pipe.zadd(self.keys.files_expiry(), {file_id: record["expires_at"]})
            await pipe.execute()

    async def read(self, file_id: str, owner: str | None) -> dict[str, Any]:
        """The file's record; FileNotFound when it does not exist, expired, or is another
        owner's (the same answer, so a 404 never tells another key's file exists)."""
        if not FILE_ID_RE.fullmatch(file_id):
            raise FileNotFound(f"no file {file_id!r}")
        raw = await self.client.hmget(self.keys.file(file_id), FILE_FIELDS)
        rec = decode_record(raw)
        if rec is None or (owner is not None and rec["owner"] != owner) \
                or rec["expires_at"] <= time.time():
            raise FileNotFound(f"no file {file_id!r}: it does not exist, or it expired "
                               f"after PREDQ_FILE_TTL_S ({self.settings.file_ttl_s} s)")
        rec["id"] = file_id
        return rec

    async def delete(self, file_id: str, owner: str | None) -> dict[str, Any]:
        rec = await self.read(file_id, owner)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.file(file_id))
            pipe.zrem(self.keys.files_expiry(), file_id)
            await pipe.execute()
        if rec["kind"] == "upload":
            await asyncio.to_thread(self.store.remove, file_id)
        return rec


def decode_record(raw: list[bytes | None]) -> dict[str, Any] | None:
    if raw[0] is None:
        return None
    out: dict[str, Any] = {}
    for name, value in zip(FILE_FIELDS, raw, strict=True):
        if value is None:
            out[name] = None
        elif name in ("bytes", "n_rows"):
            out[name] = int(value)
        elif name in ("created_at", "expires_at"):
            out[name] = float(value)
        elif name in ("columns", "types"):
            out[name] = orjson.loads(value)
        else:
            out[name] = value.decode()
    return out


def file_view(rec: dict[str, Any]) -> dict[str, Any]:
    """A file as GET /v1/files/{id} shows it."""
    upload = rec["kind"] == "upload"  # a batch's output is rendered when downloaded
    return {"id": rec["id"], "object": "file", "bytes": rec["bytes"] if upload else None,
            "format": rec["format"], "sha256": rec["sha256"] if upload else None,
            "created_at": iso(rec["created_at"]),
            "expires_at": iso(rec["expires_at"]), "purpose": rec["kind"],
            "filename": rec.get("filename") or None,
            "n_rows": rec["n_rows"] if upload else None,
            "columns": rec["columns"] if upload else None, "batch_id": rec.get("batch_id") or None,
            "links": {"self": f"/v1/files/{rec['id']}",
                      "content": f"/v1/files/{rec['id']}/content"}}


def sweep(client: Any, keys: Keys, store: FileStore, now: float | None = None,
          limit: int = 500) -> int:
    """Free the disk of every file and batch whose time has come (sync client); how many.

    Their Redis records have expired on their own (EXPIREAT); this removes what they
    pointed at. Safe to run in several workers at once (each removal is idempotent).
    """
    now = time.time() if now is None else now
    due = client.zrangebyscore(keys.files_expiry(), "-inf", repr(now), start=0, num=limit)
    for member in due:
        object_id = member.decode() if isinstance(member, bytes) else member
        store.remove(object_id)
        client.zrem(keys.files_expiry(), object_id)
    # Leftovers of uploads cut off by a crash: tmp files older than a day.
    tmp = store.root / "tmp"
    if tmp.is_dir():
        for p in tmp.iterdir():
            try:
                if p.stat().st_mtime < now - 86_400:
                    p.unlink(missing_ok=True)
            except OSError:
                pass
    return len(due)


__all__ = ["FORMATS", "AsyncFiles", "FileStore", "file_view", "sweep", "write_atomic"]
