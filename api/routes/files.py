"""File routes: upload (streamed), describe, download, delete."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse, Response, StreamingResponse

from predq.api.deps import AppState, JobsRead, JobsWrite, StateDep, owner_filter
from predq.api.jobviews import json_response
from predq.api.schemas import Problem
from predq.shared.batchfiles import batchstore as bstore
from predq.shared.batchfiles.filestore import FileStore, file_view
from predq.shared.batchfiles.tabular import (
    ACCEPTED_TYPES,
    FORMATS,
    MEDIA_TYPES,
    BatchWriter,
    Format,
)
from predq.shared.errors import JobConflict, PayloadTooLarge, UnsupportedMediaType

router = APIRouter(tags=["files"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
_UPLOAD_DOC = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in MEDIA_TYPES.values()}}}


def _declared(request: Request, state: AppState) -> tuple[Format, bool]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = ACCEPTED_TYPES.get(ctype)
    if fmt is None:
        raise UnsupportedMediaType(
            f"send the file with Content-Type {', '.join(MEDIA_TYPES.values())}, not "
            f"{ctype or 'none'!r}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: send "
                                   "gzip or nothing")
    gzip = encoding != "identity"
    limit = state.settings.max_file_bytes
    declared = request.headers.get("content-length")
    if not gzip and declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the file is {declared} bytes; the limit is {limit} "
                              "(PREDQ_MAX_FILE_BYTES)")
    return fmt, gzip


@router.post("/v1/files", status_code=201, responses=_ERRORS, openapi_extra=_UPLOAD_DOC)
async def upload_file(request: Request, state: StateDep, principal: JobsWrite,
                      filename: Annotated[str | None, Query(max_length=255)] = None
                      ) -> Response:
    """Upload a CSV, JSON Lines or Parquet file (optionally gzip), streamed to the store."""
    fmt, gzip = _declared(request, state)
    rec = await state.files.upload(request.stream(), fmt=fmt, gzip=gzip,
                                   owner=principal.name, filename=filename)
    return json_response(orjson.dumps(file_view(rec)), 201,
                         {"Location": f"/v1/files/{rec['id']}"})


@router.get("/v1/files/{file_id}", responses=_ERRORS)
async def get_file(file_id: str, state: StateDep, principal: JobsRead) -> Response:
    """Describe a file."""
    rec = await state.files.read(file_id, owner_filter(principal))
    return json_response(orjson.dumps(file_view(rec)))


@router.delete("/v1/files/{file_id}", responses=_ERRORS)
async def delete_file(file_id: str, state: StateDep, principal: JobsWrite) -> Response:
    """Delete a file (its disk space is freed at once)."""
    rec = await state.files.delete(file_id, owner_filter(principal))
    return json_response(orjson.dumps({"id": rec["id"], "object": "file", "deleted": True}))


FormatQuery = Annotated[Format | None, Query(
    description="For a batch's output: csv, jsonl or parquet (default: the batch's).")]


@router.get("/v1/files/{file_id}/content", responses=_ERRORS)
async def file_content(file_id: str, state: StateDep, principal: JobsRead,
                       format: FormatQuery = None) -> Response:  # noqa: A002 (API name)
    """Download a file: an upload as stored, a batch's output or its error lines."""
    rec = await state.files.read(file_id, owner_filter(principal))
    if rec["kind"] == "upload":
        return FileResponse(state.files.store.upload(file_id),
                            media_type=MEDIA_TYPES[rec["format"]])
    b = await state.batches.read(rec["batch_id"], None)
    if b["status"] not in bstore.TERMINAL:
        raise JobConflict(f"batch {b['id']} is still {b['status']}: its output is written "
                          f"when it ends (GET /v1/batches/{b['id']}?wait=60)")
    store = state.files.store
    n = b["chunks_total"] or 0
    if rec["kind"] == "errors":
        return StreamingResponse(_error_lines(store, b["id"], n),
                                 media_type=MEDIA_TYPES["jsonl"])
    # Only chunks the batch counted: one that ended after a cancel is not in the counts.
    done = {int(k) for k in await state.redis.smembers(
        state.files.keys.batch_done_chunks(b["id"]))}
    fmt: Format = format or b["output_format"]
    name = f"{b['id']}.predictions.{fmt}"
    return StreamingResponse(_output(store, b["id"], sorted(done), fmt),
                             media_type=MEDIA_TYPES[fmt],
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _error_lines(store: FileStore, batch_id: str, n: int) -> Iterator[bytes]:
    for k in range(n):
        path = store.errors(batch_id, k)
        if path.exists():
            data = path.read_bytes()
            if data:
                yield data


class _Drain(io.RawIOBase):
    """A write-only stream whose bytes are taken out as they come (tell() keeps counting,
    as the Parquet writer needs)."""

    def __init__(self) -> None:
        self.buf: list[bytes] = []
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.buf.append(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out = b"".join(self.buf)
        self.buf = []
        return out


def _output(store: FileStore, batch_id: str, chunks: list[int], fmt: Format
            ) -> Iterator[bytes]:
    """The output parts in input order, converted to ``fmt`` as they stream (runs in a
    thread: StreamingResponse iterates a plain iterator in the threadpool)."""
    import pyarrow as pa

    sink = _Drain()
    writer: BatchWriter | None = None
    for k in chunks:
        path = store.part(batch_id, k)
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_file(src).read_all()
        if table.num_rows == 0:  # every row of the chunk failed (its types may be null)
            continue
        if writer is None:
            writer = BatchWriter(sink, fmt, table.schema)
        elif table.schema != writer.schema:
            table = table.cast(writer.schema)
        for batch in table.to_batches(max_chunksize=16_384):
            writer.write(batch)
            data = sink.take()
            if data:
                yield data
    if writer is not None:
        writer.close()
        data = sink.take()
        if data:
            yield data


__all__ = ["FORMATS", "router"]
