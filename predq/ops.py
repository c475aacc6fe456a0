"""Process set-up shared by ``predq api`` and ``predq up``: logging, metrics, grace periods."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from predq.shared.observability.logs import configure_logging
from predq.shared.settings import Settings

#: Seconds ``up`` (and docker-compose's stop_grace_period) add to the worker's own grace
#: period: the worker's last-resort exit comes 10 s after it, plus a margin.
SUPERVISOR_MARGIN_S = 15.0


def prepare_api_process(settings: Settings, workers: int) -> None:
    """Before uvicorn starts: our logging (uvicorn's own is switched off), and, with several
    uvicorn processes, prometheus_client's multiprocess mode in a fresh directory.

    An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used as is (it must be empty at start,
    as prometheus_client requires); ours is removed when the server exits.
    """
    configure_logging(settings, "api")
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = tempfile.mkdtemp(prefix="predq-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # inherited by uvicorn's processes
        atexit.register(shutil.rmtree, path, ignore_errors=True)


def supervisor_grace(settings: Settings, floor: float) -> float:
    """How long a supervisor waits after SIGTERM before SIGKILL: at least ``floor``, and long
    enough for a worker to use its whole shutdown grace period."""
    return max(floor, settings.worker_shutdown_grace_s + SUPERVISOR_MARGIN_S)
