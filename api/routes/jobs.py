"""Job routes: submit (async and sync), read with long-poll, cancel."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from typing_extensions import TypedDict

from predq.api.deps import AppState, JobsRead, JobsWrite, ModelsRead, StateDep, owner_filter
from predq.api.jobstore import is_terminal
from predq.api.jobviews import job_json, job_links, json_response
from predq.api.schemas import BatchStats, Job, JobAccepted, PredictResult, Problem
from predq.api.security.bodycheck import check_json_depth, read_json_body
from predq.shared.errors import InvalidInput, MalformedJson
from predq.shared.registry.schema import ParsedJob, is_json_error

router = APIRouter(tags=["jobs"])

#: Bodies above this are validated in a worker thread, so one huge job does not stall the
#: event loop for everyone else.
_THREAD_BODY_BYTES = 256 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/JobRequest"}}}}}

#: Set on a response that returns the job an earlier request with the same
#: Idempotency-Key created (on /jobs and /predict alike).
REPLAYED = "Idempotent-Replayed"

WaitQuery = Annotated[float | None, Query(ge=0, description="Seconds to hold the request.")]
IdemHeader = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255,
                                          pattern=r"^[\x21-\x7e]+$")]


class _VersionOnly(TypedDict, total=False):
    version: str | None


#: Reads only the top-level ``version`` of a body, with the same parser (jiter) and the same
#: string rules as the model's own request schema; other members are ignored unbuilt.
_VERSION_ONLY = TypeAdapter(with_config(ConfigDict(extra="ignore"))(_VersionOnly))


def _requested_version(body: bytes) -> str | None:
    """The top-level ``version`` of the parsed body (None when it names none).

    Skipped only when no member can be called ``version``: the bytes hold neither
    ``"version"`` nor any escape (``"\\u0076ersion"`` is the same key)."""
    if b'"version"' not in body and b"\\" not in body:
        return None
    try:
        obj = _VERSION_ONLY.validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise MalformedJson(f"the body is not valid JSON: {errors[0]['msg']}") from e
        if any(tuple(err["loc"][:1]) == ("version",) for err in errors):
            raise InvalidInput("version must be a string", errors=[
                {"loc": ["body", "version"], "msg": "Input should be a valid string",
                 "type": "string_type"}]) from e
        return None  # not an object: the model's schema says so, naming where
    return obj.get("version")


async def _parse(request: Request, state: AppState, name: str, *, allow_webhook: bool
                 ) -> tuple[Any, ParsedJob, bytes]:
    body = await read_json_body(request, state.settings.max_body_bytes)
    await check_json_depth(body, state.settings)  # before any parser: 422 naming where
    if len(body) > _THREAD_BODY_BYTES:
        version = await run_in_threadpool(_requested_version, body)
    else:
        version = _requested_version(body)
    manifest = state.resolve(name, version)
    schema = state.schema_for(manifest)
    try:
        if len(body) > _THREAD_BODY_BYTES:
            parsed = await run_in_threadpool(schema.parse, body, allow_webhook=allow_webhook)
        else:
            parsed = schema.parse(body, allow_webhook=allow_webhook)
    except InvalidInput as e:
        if is_json_error(e):
            raise MalformedJson(f"the body is not valid JSON: {e.errors[0]['msg']}") from e
        raise
    if parsed.webhook is not None and state.webhook_guard is not None:
        state.webhook_guard(parsed.webhook)
    return manifest, parsed, body


async def wait_for(state: AppState, job_id: str, owner: str | None, timeout: float,
                   *, ended: asyncio.Event | None = None) -> dict[str, Any]:
    """The job once it ended or ``timeout`` seconds passed, whichever is first.

    ``ended``: the event of a registration made before the job was created (the sync
    predict's): nothing can have ended unseen, so the first read waits for its wake-up (one
    Redis round trip fewer). Without it, the job is read at once (it may have ended)."""
    if ended is not None:
        return await _wait_registered(state, job_id, owner, timeout, ended, None)
    async with state.waiters.register(job_id) as event:
        job = await state.jobs.read(job_id, owner)
        return await _wait_registered(state, job_id, owner, timeout, event, job)


async def _wait_registered(state: AppState, job_id: str, owner: str | None, timeout: float,
                           ended: asyncio.Event, job: dict[str, Any] | None
                           ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job is None or not is_terminal(job)) and (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(ended.wait(), left)
        except TimeoutError:
            break
        ended.clear()
        job = await state.jobs.read(job_id, owner)
    return job if job is not None else await state.jobs.read(job_id, owner)


def _accepted(job: dict[str, Any], replayed: bool) -> Response:
    """The 202 of a submit. A replay describes the job it returns, as stored (its model,
    version, size and current status), never the request that replayed it."""
    job_id = job["id"]
    body = {"id": job_id, "status": job["status"], "model": job["model"],
            "version": job["version"], "n_inputs": job["n_inputs"],
            "created_at": job["created_at"], "links": job_links(job_id)}
    headers = {"Location": f"/v1/jobs/{job_id}"}
    if replayed:
        headers[REPLAYED] = "true"
    return json_response(orjson.dumps(body), 202, headers)


@router.post("/v1/models/{name}/jobs", status_code=202, response_model=JobAccepted,
             responses=_ERRORS, openapi_extra=_BODY_DOC)
async def submit_job(name: str, request: Request, principal: JobsWrite,
                     idempotency_key: IdemHeader = None) -> Response:
    """Submit a list of inputs; answers 202 with the job's location at once."""
    state: AppState = request.app.state.predq  # the hot routes skip StateDep's solve
    manifest, parsed, body = await _parse(request, state, name, allow_webhook=True)
    job_id, created, created_at = await state.jobs.submit(
        model=manifest.name, version=manifest.version, parsed=parsed, owner=principal.name,
        idempotency_key=idempotency_key, fingerprint_of=body)
    if not created:
        return _accepted(await state.jobs.read(job_id, None), True)
    return _accepted({"id": job_id, "status": "queued", "model": manifest.name,
                      "version": manifest.version, "n_inputs": parsed.n_rows,
                      "created_at": created_at}, False)


@router.post("/v1/models/{name}/predict", response_model=PredictResult,
             responses={202: {"model": JobAccepted}, **_ERRORS},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
async def predict(name: str, request: Request, principal: JobsWrite,
                  wait: WaitQuery = None, idempotency_key: IdemHeader = None) -> Response:
    """Predict synchronously through the same queue; 202 if it takes longer than the wait."""
    state: AppState = request.app.state.predq
    manifest, parsed, body = await _parse(request, state, name, allow_webhook=False)
    s = state.settings
    timeout = min(s.sync_wait_s if wait is None else wait, s.max_wait_s)
    new_id = str(uuid.uuid4())
    async with state.waiters.register(new_id) as ended:
        job_id, created, _ = await state.jobs.submit(
            model=manifest.name, version=manifest.version, parsed=parsed, owner=principal.name,
            idempotency_key=idempotency_key, fingerprint_of=body, job_id=new_id)
        # A new job was registered for before it existed; a replayed one may have ended.
        job = await wait_for(state, job_id, principal.name, timeout,
                             ended=ended if created else None)
    replayed = {} if created else {REPLAYED: "true"}
    if job["status"] == "succeeded":
        head = orjson.dumps({"model": job["model"], "version": job["version"],
                             "job_id": job_id})
        return json_response(b"".join([head[:-1], b',"outputs":', job["outputs"], b"}"]),
                             headers=replayed or None)
    if job["status"] in ("queued", "running"):
        return json_response(job_json(job), 202,
                             {"Location": f"/v1/jobs/{job_id}", **replayed})
    response = _failed_problem(job)
    response.headers.update(replayed)
    return response


def _failed_problem(job: dict[str, Any]) -> Response:
    from predq.api.problems import problem

    err = job.get("error") or {}
    if job["status"] in ("cancelled", "expired"):
        return problem(409, "Job did not run", f"job {job['id']} was {job['status']}")
    status = 422 if err.get("type") in ("PredictError", "OutputMismatch") else 503
    return problem(status, "Prediction failed",
                   f"job {job['id']} failed: {err.get('type')}: {err.get('message')}")


@router.get("/v1/jobs/{job_id}", response_model=Job, responses=_ERRORS)
async def get_job(job_id: str, request: Request, principal: JobsRead,
                  wait: WaitQuery = None) -> Response:
    """Read a job; ``?wait=S`` holds the request until it ends or S seconds pass."""
    state: AppState = request.app.state.predq
    owner = owner_filter(principal)
    if wait:
        job = await wait_for(state, job_id, owner, min(wait, state.settings.max_wait_s))
    else:
        job = await state.jobs.read(job_id, owner)
    return json_response(job_json(job, await state.queue_info(job)))


@router.delete("/v1/jobs/{job_id}", response_model=Job, responses=_ERRORS)
async def cancel_job(job_id: str, state: StateDep, principal: JobsWrite) -> Response:
    """Cancel a job that has not ended; 409 if it already did."""
    job = await state.jobs.cancel(job_id, owner_filter(principal))
    return json_response(job_json(job))


@router.get("/v1/stats/batches", response_model=BatchStats, tags=["operations"])
async def batch_stats(state: StateDep, _: ModelsRead) -> dict[str, Any]:
    """Micro-batch statistics: how many jobs each predict batch merged."""
    keys = state.jobs.keys
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.batch_stats())
        pipe.lrange(keys.recent_batches(), 0, 99)
        raw, recent = await pipe.execute()
    stats = {k.decode(): int(v) for k, v in raw.items()}
    hist = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("jobs_per_batch:")}
    return {
        "batches": stats.get("batches", 0), "predict_calls": stats.get("predict_calls", 0),
        "jobs": stats.get("jobs", 0), "rows": stats.get("rows", 0),
        "jobs_per_batch": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
        "recent": [dict(zip(("jobs", "rows"), map(int, r.decode().split(",")), strict=True))
                   for r in recent],
    }
