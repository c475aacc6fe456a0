"""A job as the API shows it: the one rendering GET /v1/jobs/{id} answers and webhooks carry.

It lives in ``shared`` because both the API and the webhook worker need it, and a webhook's
``data`` must be exactly what GET returns. The input is a job read with
``HMGET(predq.shared.jobstore.scripts.VIEW_FIELDS)`` and
:func:`predq.shared.jobstore.scripts.decode_fields`, plus ``id`` and
``expires_in`` (seconds left of the record, from PTTL).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from predq.shared.webhooks.signing import event_for
from predq.shared.webhooks.state import public


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "wait": f"/v1/jobs/{job_id}?wait=30"}


def webhook_view(job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's webhook and its delivery log (None without a webhook)."""
    spec = job.get("webhook")
    if not spec:
        return None
    event = event_for(job["status"])
    wanted = event if event in spec["events"] else None
    return {"url": spec["url"], "events": spec["events"],
            **public(job.get("webhook_state"), job["status"], wanted)}


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
    hook = webhook_view(job)
    if hook is not None:
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
