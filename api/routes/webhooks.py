"""Webhook routes (admin): redeliver one job's webhook, list the dead letters.

:func:`install` also sets the submit-time URL check (``AppState.webhook_guard``) and
documents the outgoing requests under the OpenAPI document's ``webhooks``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query
from starlette.responses import Response

from predq.api.deps import Admin, AppState, StateDep
from predq.api.jobviews import job_json, json_response
from predq.api.schemas import DeadLetters, Job, Problem, WebhookEvent
from predq.api.webhook_admin import dead_letters, redeliver, submit_guard

router = APIRouter(tags=["webhooks"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (401, 403, 404, 409, 422)
}


@router.post("/v1/jobs/{job_id}/webhook/redeliver", status_code=202, response_model=Job,
             responses=_ERRORS)
async def redeliver_webhook(job_id: str, state: StateDep, _: Admin) -> Response:
    """Redeliver a job's webhook (admin): a new round of attempts, same webhook-id."""
    await state.jobs.read(job_id, None)  # 404 for an unknown or expired job
    await redeliver(state.redis, state.settings, job_id)
    return json_response(job_json(await state.jobs.read(job_id, None)), 202)


@router.get("/v1/webhooks/dead", response_model=DeadLetters, responses=_ERRORS)
async def list_dead_webhooks(
    state: StateDep, _: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """List webhooks that failed for good (admin), newest first."""
    return await dead_letters(state.redis, state.settings, limit=limit, offset=offset)


_SIGNED = "Signed: verify with any Standard Webhooks library (see README.md § Webhooks)."
WebhookId = Annotated[str, Header(alias="webhook-id",
                                  description="Stable per job and event: drop duplicates.")]
WebhookTimestamp = Annotated[str, Header(alias="webhook-timestamp",
                                         description="Unix seconds of this attempt.")]
WebhookSignature = Annotated[str, Header(
    alias="webhook-signature",
    description="v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>, one per secret, "
                "space-separated.")]
_RECEIVER: dict[int | str, dict[str, Any]] = {"2XX": {
    "description": "Received. Anything else is retried or dropped (see the retry policy)."}}


def _document(app: FastAPI) -> None:
    @app.webhooks.post("job.completed", responses=_RECEIVER)
    def job_completed(body: WebhookEvent, webhook_id: WebhookId,
                      webhook_timestamp: WebhookTimestamp,
                      webhook_signature: WebhookSignature) -> None:
        """A job succeeded; ``data.outputs`` holds its results."""

    @app.webhooks.post("job.failed", responses=_RECEIVER)
    def job_failed(body: WebhookEvent, webhook_id: WebhookId,
                   webhook_timestamp: WebhookTimestamp,
                   webhook_signature: WebhookSignature) -> None:
        """A job failed; ``data.error`` says why."""

    for route in app.webhooks.routes:
        route.description = (route.description or "") + "\n\n" + _SIGNED  # type: ignore[attr-defined]


def install(app: FastAPI) -> None:
    """Add the routes, the submit-time check, and the webhook documentation to ``app``."""

    def set_guard(state: AppState) -> None:
        state.webhook_guard = submit_guard(state.settings)

    app.state.predq_startup_hooks.append(set_guard)
    app.include_router(router)
    _document(app)
