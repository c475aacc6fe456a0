"""Operations wiring of the API: logging, request metrics and ``/metrics``.

:func:`install` is called once by ``predq.api.app.create_app``; it keeps the app factory free of the
details. The readiness probe lives in ``predq.api.routes.health``.
"""

from __future__ import annotations

from fastapi import FastAPI

from predq.api.observability.request_metrics import RequestMetrics
from predq.api.routes import metrics
from predq.shared.observability.logs import configure_logging
from predq.shared.observability.metrics import HttpMetrics
from predq.shared.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Configure logging, wrap the app in the request-metrics middleware, add ``/metrics``."""
    configure_logging(settings, "api")
    http = HttpMetrics()
    app.state.predq_http_metrics = http
    app.add_middleware(RequestMetrics, metrics=http)
    app.include_router(metrics.router)
