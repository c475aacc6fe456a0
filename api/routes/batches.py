"""Batch routes: create from an uploaded file, read (long-poll), list, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.responses import Response

from predq.api.deps import AppState, JobsRead, JobsWrite, StateDep, owner_filter
from predq.api.jobviews import json_response
from predq.api.schemas import Problem
from predq.api.security.bodycheck import check_json_depth, read_json_body
from predq.shared.batchfiles.batchstore import TERMINAL, batch_json, batch_view, n_chunks
from predq.shared.batchfiles.filestore import new_file_id
from predq.shared.batchfiles.tabular import Format, type_mismatch
from predq.shared.errors import InvalidInput, MalformedJson
from predq.shared.registry.schema import problem_errors
from predq.shared.registry.store import Manifest

router = APIRouter(tags=["batches"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
WaitQuery = Annotated[float | None, Query(ge=0, description="Seconds to hold the request.")]
IdemHeader = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255,
                                          pattern=r"^[\x21-\x7e]+$")]


BatchEvent = Literal["batch.completed", "batch.failed"]


class BatchWebhook(BaseModel):
    """Where and for which events to call back."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(min_length=1, max_length=2048, strict=True)]
    events: list[BatchEvent] = Field(
        default_factory=lambda: list[BatchEvent](["batch.completed", "batch.failed"]),
        min_length=1)


class BatchRequest(BaseModel):
    """POST /v1/models/{name}/batches."""

    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(max_length=64, description="An uploaded file (POST /v1/files).")
    version: str | None = Field(None, max_length=64, description="Version or alias.")
    id_column: str | None = Field(None, min_length=1, max_length=256, description=(
        "A column passed through to the output, not a feature (default: the row number)."))
    on_error: Literal["skip", "fail"] = Field(
        "skip", description="skip: bad rows go to the error file; fail: they fail the batch.")
    output_format: Format | None = Field(None, description="Default: the input's format.")
    webhook: BatchWebhook | None = None
    metadata: dict[str, Any] | None = None


def _check_columns(manifest: Manifest, rec: dict[str, Any], id_column: str | None) -> None:
    """422 naming every missing, unknown or mistyped column, before any compute."""
    columns = rec["columns"]
    features = {f.name: f for f in manifest.features}
    errors: list[dict[str, Any]] = []
    if id_column is not None:
        if id_column not in columns:
            errors.append({"loc": ["body", "id_column"], "type": "missing_column",
                           "msg": f"the file has no column {id_column!r}"})
        elif id_column in features:
            errors.append({"loc": ["body", "id_column"], "type": "id_is_feature",
                           "msg": f"{id_column!r} is a feature of the model, not an id"})
    missing = [n for n, f in features.items() if f.required and n not in columns]
    unknown = [c for c in columns if c not in features and c != id_column]
    for name in missing:
        errors.append({"loc": ["file", "columns", name], "type": "missing_column",
                       "msg": f"the model's feature {name!r} has no column in the file"})
    for name in unknown:
        errors.append({"loc": ["file", "columns", name], "type": "unknown_column",
                       "msg": f"column {name!r} is not a feature of the model (pass an id "
                              "column as id_column)"})
    for name, arrow_name in (rec.get("types") or {}).items():
        f = features.get(name)
        if f is not None and type_mismatch(f.type, arrow_name):
            errors.append({"loc": ["file", "columns", name], "type": "column_type",
                           "msg": f"column {name!r} holds {arrow_name}; the model's feature "
                                  f"is {f.type}"})
    if errors:
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown columns: {', '.join(unknown)}")
        detail = "; ".join(parts) or errors[0]["msg"]
        raise InvalidInput(f"the file's columns do not fit model {manifest.name} "
                           f"v{manifest.version}: {detail}", errors=errors)


#: A batch request is small; a bigger body is refused before it is held (413).
MAX_REQUEST_BYTES = 256 * 1024


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with its ``$defs`` inlined (for the OpenAPI request body)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": _inline(BatchRequest.model_json_schema())}}}}


async def _read_request(request: Request, settings: Any) -> BatchRequest:
    """The body, read with a cap (FastAPI's own body parsing would hold any size), its
    depth checked before parsing, then validated: 400, 413, 415 or 422 problems."""
    body = await read_json_body(request, MAX_REQUEST_BYTES,
                                too_large=f"a batch request is at most {MAX_REQUEST_BYTES} bytes")
    await check_json_depth(body, settings)
    try:
        return BatchRequest.model_validate_json(body)
    except ValidationError as e:
        errors = problem_errors(e)
        if any(err["type"] == "json_invalid" for err in errors) or not body.strip():
            raise MalformedJson("the body is not valid JSON") from e
        raise InvalidInput(f"{e.error_count()} validation error(s)", errors=errors) from e


@router.post("/v1/models/{name}/batches", status_code=202, responses=_ERRORS,
             openapi_extra=_BODY_DOC)
async def create_batch(name: str, request: Request, state: StateDep, principal: JobsWrite,
                       idempotency_key: IdemHeader = None) -> Response:
    """Score an uploaded file; answers 202 with the batch's location at once."""
    body = await _read_request(request, state.settings)
    manifest = state.resolve(name, body.version)
    rec = await state.files.read(body.file_id, principal.name)
    if rec["kind"] != "upload":
        raise InvalidInput("only an uploaded file can be scored", errors=[
            {"loc": ["body", "file_id"], "type": "not_an_upload",
             "msg": f"{body.file_id} is a batch's {rec['kind']} file"}])
    _check_columns(manifest, rec, body.id_column)
    if body.webhook is not None and state.webhook_guard is not None:
        state.webhook_guard(body.webhook)
    if body.metadata is not None and \
            len(orjson.dumps(body.metadata)) > state.settings.max_metadata_bytes:
        raise InvalidInput("metadata is too large", errors=[
            {"loc": ["body", "metadata"], "type": "too_long",
             "msg": f"at most {state.settings.max_metadata_bytes} bytes of JSON"}])
    s = state.settings
    now = time.time()
    batch_id = f"batch_{uuid.uuid4().hex}"
    fields = {
        "status": "queued", "owner": principal.name, "model": manifest.name,
        "version": manifest.version, "sha256": manifest.sha256,
        "input_file_id": body.file_id, "input_format": rec["format"],
        "output_file_id": new_file_id(), "error_file_id": new_file_id(),
        "id_column": body.id_column or "", "on_error": body.on_error,
        "output_format": body.output_format or rec["format"],
        "webhook": body.webhook.model_dump_json() if body.webhook else None,
        "metadata": orjson.dumps(body.metadata) if body.metadata is not None else None,
        "created_at": now, "expires_at": now + s.file_ttl_s,
        "total_rows": rec["n_rows"], "done_rows": 0, "failed_rows": 0,
        "chunks_total": n_chunks(rec["n_rows"], s.batch_chunk_rows), "chunks_done": 0,
        "queue": s.batch_queue_for(manifest.name), "chunk_rows": s.batch_chunk_rows,
        "columns": orjson.dumps(rec["columns"]),
    }
    fingerprint = hashlib.sha256(body.model_dump_json().encode() + name.encode()).hexdigest()
    got_id, created = await state.batches.create(
        batch_id, fields, owner=principal.name, idempotency_key=idempotency_key,
        fingerprint=fingerprint[:32])
    if created:
        for kind in ("output", "errors"):
            await state.files.save(fields["output_file_id" if kind == "output"
                                          else "error_file_id"], {
                "owner": principal.name, "format": fields["output_format"]
                if kind == "output" else "jsonl", "bytes": 0, "sha256": "",
                "created_at": now, "expires_at": fields["expires_at"],
                "columns": b"[]", "n_rows": 0, "types": b"null", "kind": kind,
                "batch_id": batch_id})
    b = await state.batches.read(got_id, principal.name)
    headers = {"Location": f"/v1/batches/{got_id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(batch_json(b), 202, headers)


async def _wait(state: AppState, batch_id: str, owner: str | None, timeout: float
                ) -> dict[str, Any]:
    async with state.waiters.register(batch_id) as ended:
        b = await state.batches.read(batch_id, owner)
        deadline = time.monotonic() + timeout
        while b["status"] not in TERMINAL and (left := deadline - time.monotonic()) > 0:
            try:  # progress is shown as it goes: re-read at least every 2 s
                await asyncio.wait_for(ended.wait(), min(left, 2.0))
            except TimeoutError:
                pass
            ended.clear()
            b = await state.batches.read(batch_id, owner)
    return b


@router.get("/v1/batches/{batch_id}", responses=_ERRORS)
async def get_batch(batch_id: str, state: StateDep, principal: JobsRead,
                    wait: WaitQuery = None) -> Response:
    """Read a batch; ``?wait=S`` holds the request until it ends or S seconds pass."""
    owner = owner_filter(principal)
    if wait:
        b = await _wait(state, batch_id, owner, min(wait, state.settings.max_wait_s))
    else:
        b = await state.batches.read(batch_id, owner)
    return json_response(batch_json(b))


@router.get("/v1/batches", responses=_ERRORS)
async def list_batches(state: StateDep, principal: JobsRead,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       after: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """The caller's batches, newest first (``?after=<id>`` for the next page)."""
    items = await state.batches.list(principal.name, limit, after)
    views = [batch_view(b) for b in items]
    body = {"object": "list", "data": views,
            "next": views[-1]["id"] if len(views) == limit else None}
    return json_response(orjson.dumps(body))


@router.delete("/v1/batches/{batch_id}", responses=_ERRORS)
async def cancel_batch(batch_id: str, state: StateDep, principal: JobsWrite) -> Response:
    """Cancel a batch: no further chunk starts; finished chunks stay downloadable."""
    b = await state.batches.cancel(batch_id, owner_filter(principal))
    return json_response(batch_json(b))
