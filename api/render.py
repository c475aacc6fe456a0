"""Shaping job records into the JSON the API answers (and webhooks carry)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "wait": f"/v1/jobs/{job_id}?wait=30"}


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """The job as GET /v1/jobs/{id} shows it, without ``outputs`` (spliced in as raw JSON)."""
    expires_at = None
    if job.get("expires_in"):
        expires_at = datetime.fromtimestamp(time.time() + job["expires_in"], UTC).isoformat(
            timespec="seconds").replace("+00:00", "Z")
    view: dict[str, Any] = {
        "id": job["id"],
        "status": job["status"],
        "model": job["model"],
        "version": job["version"],
        "n_inputs": job["n_inputs"],
        "created_at": job["created_at"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "expires_at": expires_at,
        "error": job["error"],
        "metadata": job["metadata"],
        "links": job_links(job["id"]),
    }
    if job.get("webhook"):
        hook = {"url": job["webhook"]["url"], "events": job["webhook"]["events"]}
        hook.update(job.get("webhook_state") or {"state": "pending", "attempts": []})
        view["webhook"] = hook
    for extra in ("queue_position", "eta_seconds"):
        if extra in job:
            view[extra] = job[extra]
    return view


def job_json(job: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
    """The job's JSON bytes, with the stored outputs spliced in unparsed."""
    view = job_view(job)
    if extra:
        view.update(extra)
    body = orjson.dumps(view)
    outputs = job.get("outputs")
    if outputs is not None and job["status"] == "succeeded":
        body = b"".join([body[:-1], b',"outputs":', outputs, b"}"])
    return body


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)
