"""Shaping job records into the JSON the API answers (and webhooks carry).

The job rendering itself lives in :mod:`predq.shared.jobstore.views`, because the webhook worker
must send
exactly what GET returns; its names are re-exported here for the routes.
"""

from __future__ import annotations

from starlette.responses import Response

from predq.shared.jobstore.views import job_json, job_links, job_view

__all__ = ["job_json", "job_links", "job_view", "json_response"]


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)
