"""``predq worker`` on another Celery pool: ``python -m bench.poolworker POOL [worker options]``.

For ``bench.pools`` only. ``predq worker`` always runs Celery's prefork pool; this runs the
same command (same app, same settings, same argv) with ``worker_pool`` set to ``POOL``
(``solo``, ``threads``, ``prefork``), which Celery's ``--pool`` default then follows. The
product's default is not changed: nothing outside this process sees the setting.
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        raise SystemExit("usage: python -m bench.poolworker POOL [predq worker options]")
    pool = args.pop(0)

    from predq.procs_cmd import worker
    from predq.worker import app as worker_app

    create = worker_app.create_app

    def create_app(settings: Any) -> Any:
        app = create(settings)
        app.conf.worker_pool = pool
        return app

    worker_app.create_app = create_app  # type: ignore[assignment]
    worker.main(args=args, prog_name=f"predq worker (pool {pool})")


if __name__ == "__main__":
    main()
