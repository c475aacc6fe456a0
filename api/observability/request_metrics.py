"""Per-request metrics and one log line per request: a pure ASGI middleware.

For every HTTP request it records ``predq_http_requests_total{method,route,status}`` and
``predq_http_request_duration_seconds{method,route}``, and logs one line with the method, the
route template, the status, the duration, a request id and, when the request concerns a job,
its ``job_id``. Routes are labelled by their template (``/v1/jobs/{job_id}``), never by the raw
path, so the number of series stays bounded; a request no route matched (a 404) is ``unmatched``.
``/docs``, ``/redoc`` and ``/openapi.json`` are labelled by their path too.

The request id is the client's ``X-Request-ID`` when it is a short token, else a new one; it is
echoed in the response's ``X-Request-ID``. Never logged: headers, query strings, bodies.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predq.shared.observability.metrics import HttpMetrics

log = logging.getLogger("predq.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LOCATION_RE = re.compile(rb"/v1/jobs/([0-9a-f-]{36})$")
_BODY_JOB_RE = re.compile(rb'"job_id":"([0-9a-f-]{36})"')
_JOB_ID_RE = re.compile(r"^[0-9a-f-]{36}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Routes polled by probes and Prometheus: logged at DEBUG, so they do not flood the logs.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestMetrics:
    """ASGI middleware: metrics and an access log line for each HTTP request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        request_id = _request_id(scope)
        seen: dict[str, Any] = {"status": 500, "job_id": None}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name.lower() == b"location":
                        m = _LOCATION_RE.search(value)
                        if m:
                            seen["job_id"] = m.group(1).decode()
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and seen["job_id"] is None \
                    and seen["status"] == 200 and not seen.get("sniffed"):
                seen["sniffed"] = True  # the sync predict's body starts with its job_id
                m = _BODY_JOB_RE.search(message.get("body", b"")[:512])
                if m:
                    seen["job_id"] = m.group(1).decode()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._done(scope, seen, request_id, time.perf_counter() - t0)

    def _done(self, scope: Scope, seen: dict[str, Any], request_id: str, seconds: float
              ) -> None:
        route_obj = scope.get("route")
        route = getattr(route_obj, "path", None) or _plain_route(scope) or "unmatched"
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "OTHER"
        status = int(seen["status"])
        self.metrics.observe(method, route, status, seconds)
        job_id = seen["job_id"]
        if job_id is None:
            param = (scope.get("path_params") or {}).get("job_id")
            job_id = param if isinstance(param, str) and _JOB_ID_RE.fullmatch(param) else None
        level = logging.WARNING if status >= 500 else (
            logging.DEBUG if route in QUIET_ROUTES else logging.INFO)
        if not log.isEnabledFor(level):
            return
        extra: dict[str, Any] = {"method": method, "route": route, "status": status,
                                 "duration_ms": round(seconds * 1000, 2),
                                 "request_id": request_id}
        if job_id:
            extra["job_id"] = job_id
        log.log(level, "%s %s %d %.1fms", method, route, status, seconds * 1000, extra=extra)


def _plain_route(scope: Scope) -> str | None:
    """The template of a plain Starlette route (``/docs``, ``/openapi.json``): FastAPI adds
    those with ``add_route``, whose match records the endpoint but not the route itself."""
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return None
    for candidate in getattr(scope.get("app"), "routes", ()):
        if getattr(candidate, "endpoint", None) is endpoint:
            return getattr(candidate, "path", None)
    return None


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID_RE.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex
