"""``predq api``, ``predq worker``, ``predq flower`` and ``predq up`` (the whole stack).

``api``, ``worker`` and ``flower`` each run one component in the foreground, as
docker-compose would. ``up`` runs all of them as child processes (each the leader of its own
process group), plus its own Redis unless ``PREDQ_REDIS_URL`` is set, and on Ctrl-C, SIGTERM
or SIGHUP stops every process it started: SIGTERM to each group, a grace period, then SIGKILL.
If a child dies on its own, ``up`` stops the rest and exits 1 naming it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NamedTuple

import click

from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

    from predq.procs import Supervisor
    from predq.redis_server import RedisServer

#: Seconds ``up`` gives its children to exit after SIGTERM before it sends SIGKILL.
UP_STOP_GRACE_S = 15.0
#: Seconds ``up`` waits for the API's /healthz after starting it.
UP_READY_TIMEOUT_S = 90.0
#: Where ``up`` keeps its own Redis's data (an append-only file), relative to the cwd.
UP_REDIS_DIR = Path(".predq/redis")

DEMO_INPUT = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as exposed


def _celery_app(settings: Settings) -> Celery:
    from worker.app import create_app

    return create_app(settings)


def _uvicorn_log_level(level: str) -> str:
    from uvicorn.config import LOG_LEVELS

    name = {"WARN": "warning", "FATAL": "critical"}.get(level.upper(), level.lower())
    return name if name in LOG_LEVELS else "info"


# -- predq api -----------------------------------------------------------------------------


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="uvicorn worker processes.")
@click.option("--allow-unauthenticated", "allow_open", is_flag=True,
              help="Allow PREDQ_AUTH_ENABLED=false on a non-loopback address.")
def api(host: str, port: int, workers: int, allow_open: bool) -> None:
    """Run the HTTP API (uvicorn, api.app:create_app)."""
    import uvicorn

    from predq.ops import prepare_api_process

    settings = get_settings()
    if not settings.auth_enabled and not _is_loopback(host) and not allow_open:
        raise click.ClickException(
            f"refusing to serve without authentication on {host}: PREDQ_AUTH_ENABLED=false "
            "is for loopback only (pass --allow-unauthenticated to override)")
    prepare_api_process(settings, workers)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=math.ceil(settings.api_shutdown_grace_s),
        access_log=False,  # the app logs each request itself
        log_config=None,  # shared.logging configures every logger, uvicorn's included
        log_level=_uvicorn_log_level(settings.log_level),
        server_header=False,
    )


# -- predq worker ----------------------------------------------------------------------------


@click.command()
@click.option("--queues", "-Q", default=None,
              help="Comma-separated queues [default: every predict queue and the webhook queue].")
@click.option("--concurrency", "-c", default=None, type=click.IntRange(min=1),
              help="Pool processes [default: PREDQ_WORKER_CONCURRENCY, else the CPU count].")
@click.option("--hostname", "-n", default=None,
              help="Celery node name, e.g. w1@%h [default: celery@%h].")
@click.option("--loglevel", "-l", default=None, help="[default: PREDQ_LOG_LEVEL]")
def worker(
    queues: str | None, concurrency: int | None, hostname: str | None, loglevel: str | None
) -> None:
    """Run a Celery worker of the predict and webhook queues."""
    settings = get_settings()
    queue_list = list(dict.fromkeys(  # de-duplicated, in order
        [q.strip() for q in queues.split(",") if q.strip()]
        if queues
        else [*settings.all_predict_queues(), settings.webhook_queue]
    ))
    if not queue_list:
        raise click.BadParameter("no queue given", param_hint="--queues")
    # A worker serving a predict queue also takes its batch-file lane (worker.lane).
    queue_list += [f"{q}.batch" for q in queue_list
                   if q != settings.webhook_queue and not q.endswith(".batch")
                   and f"{q}.batch" not in queue_list]
    argv = [
        "worker",
        f"--queues={','.join(queue_list)}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--loglevel={(loglevel or settings.log_level).upper()}",
        "--task-events",  # -E: Flower and the metrics follow tasks live
        "--without-gossip",  # both only slow the start down on a small cluster
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app = _celery_app(settings)
    # app.worker_main(argv) would do the same but drops the exit code; app.start returns it,
    # so a worker that fails to start makes `predq worker` (and so `predq up`) fail.
    code = app.start(argv)
    sys.exit(code or 0)


# -- predq flower ----------------------------------------------------------------------------


@click.command()
@click.option("--port", default=5555, show_default=True, type=click.IntRange(1, 65535))
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind.")
def flower(port: int, address: str) -> None:
    """Run Flower, the Celery dashboard, against predq's broker."""
    settings = get_settings()
    basic_auth = settings.flower_basic_auth
    if basic_auth is not None:
        user, _, password = basic_auth.partition(":")
        if not user or not password:
            raise click.UsageError("PREDQ_FLOWER_BASIC_AUTH must look like user:password")
    elif not _is_loopback(address):
        raise click.UsageError(
            f"Flower would listen on {address} without a password: it shows every task and can "
            "shut workers down. Set PREDQ_FLOWER_BASIC_AUTH=user:password, or keep "
            "--address 127.0.0.1."
        )
    argv = ["flower", f"--port={port}", f"--address={address}"]
    if basic_auth is not None:
        # In-process argv: the password never shows in `ps`.
        argv.append(f"--basic-auth={basic_auth}")
    code = _celery_app(settings).start(argv)
    sys.exit(code or 0)


# -- predq up ----------------------------------------------------------------------------------


class DemoCurl(NamedTuple):
    """Copy-paste commands that try the demo model: submit a job, then fetch its result."""

    submit: str
    fetch: str


def demo_curl(base_url: str, api_key: str | None = None) -> DemoCurl:
    """The curl commands printed by ``predq up`` (and parsed by its end-to-end test).

    ``fetch`` holds the placeholder ``JOB_ID`` for the ``id`` of the submit's reply.
    """
    auth = f" -H {shlex.quote(f'Authorization: Bearer {api_key}')}" if api_key else ""
    body = json.dumps({"inputs": [DEMO_INPUT]})
    submit = (
        f"curl -s -X POST {base_url}/v1/models/iris/jobs{auth}"
        f" -H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    fetch = f"curl -s{auth} {shlex.quote(f'{base_url}/v1/jobs/JOB_ID?wait=5')}"
    return DemoCurl(submit=submit, fetch=fetch)


class _StopRequested(BaseException):
    """SIGINT, SIGTERM or SIGHUP reached ``up`` (a BaseException, like KeyboardInterrupt)."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _StopRequested(signal.Signals(signum).name)


@contextmanager
def _signals_raise_stop() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`_StopRequested`.

    SIGINT too: a shell starts a background job (``predq up &``) with SIGINT ignored, and
    Python then never raises KeyboardInterrupt, yet ``kill -INT`` must still stop the stack.
    """
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, _raise_stop) for s in stop_signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Hurry:
    """A signal during shutdown: skip the rest of the grace period and SIGKILL at once."""

    def __init__(self) -> None:
        self.flag = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if not self.flag:
            click.echo("predq up: stopping now (SIGKILL)", err=True)
        self.flag = True


def _url_host(host: str) -> str:
    """The host to put in URLs: a wildcard bind is reached through loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _check_port_free(host: str, port: int, option: str) -> None:
    """Fail fast, naming the option, rather than after a child fails to bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and tornado do
        try:
            s.bind((host, port))
        except OSError as e:
            raise click.UsageError(
                f"cannot listen on {host}:{port} ({e.strerror}); choose another {option}"
            ) from e


def _start_redis(server: RedisServer) -> None:
    server.start()
    os.environ["PREDQ_REDIS_URL"] = server.url  # inherited by every child
    get_settings.cache_clear()


def _register_demo(settings: Settings) -> None:
    from predq.demo import ensure_demo
    from shared.registry import Registry

    ensure_demo(Registry(settings.registry_root))


def _start_children(
    sup: Supervisor, host: str, port: int, flower_port: int, settings: Settings
) -> str:
    """Start api, worker and flower; return the address Flower listens on."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    predq = [sys.executable, "-m", "predq"]
    flower_address = host
    if not _is_loopback(host) and not settings.flower_basic_auth:
        flower_address = "127.0.0.1"
        click.echo("predq up: Flower stays on 127.0.0.1 (set PREDQ_FLOWER_BASIC_AUTH to expose "
                   "it)", err=True)
    sup.start("api", [*predq, "api", "--host", host, "--port", str(port)], env=env,
              prefix="api   ")
    sup.start("worker", [*predq, "worker"], env=env, prefix="worker")
    sup.start("flower", [*predq, "flower", "--port", str(flower_port),
                         "--address", flower_address], env=env, prefix="flower")
    return flower_address


def _print_banner(base_url: str, flower_url: str, redis: RedisServer | None,
                  api_key: str | None = None) -> None:
    curl = demo_curl(base_url, api_key)
    key_line = (f"  Key     {api_key}\n"
                "          (a development key with every scope, for this run only; set\n"
                "          PREDQ_API_KEYS to use your own: see `predq keys create`)\n"
                if api_key else "")
    redis_line = (
        f"{redis.url} (started by predq up, data in {redis.dir})"
        if redis is not None
        else f"{get_settings().redis_url} (PREDQ_REDIS_URL)"
    )
    click.echo(
        "\n"
        "predq is up:\n"
        f"  API     {base_url}\n"
        f"  Docs    {base_url}/docs\n"
        f"  Flower  {flower_url}\n"
        f"  Redis   {redis_line}\n"
        f"{key_line}"
        "\n"
        "Submit a job to the demo model:\n"
        f"  {curl.submit}\n"
        "Then fetch its result (JOB_ID is the \"id\" of the reply):\n"
        f"  {curl.fetch}\n"
        "\n"
        "Press Ctrl-C to stop.\n"
    )


def _supervise(sup: Supervisor, redis: RedisServer | None) -> None:
    """Return never; raise ChildExited (or RedisServerError) when a process ends on its own."""
    from predq.procs import ChildExited
    from predq.redis_server import RedisServerError

    while True:
        dead = sup.first_exited()
        if dead is not None:
            raise ChildExited(dead)
        if redis is not None and not redis.running:
            raise RedisServerError(f"the redis-server on port {redis.port} exited")
        time.sleep(0.25)


def _shutdown(sup: Supervisor, redis: RedisServer | None) -> None:
    """Stop the children together, then Redis last, so workers can ack while they stop."""
    hurry = _Hurry()
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, hurry)
    try:
        from predq.ops import supervisor_grace

        grace = supervisor_grace(get_settings(), UP_STOP_GRACE_S)
        sup.stop_all(timeout=grace, hurry=lambda: hurry.flag)
        if redis is not None:
            redis.stop(timeout=1.0 if hurry.flag else 10.0)
    finally:
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the API.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--flower-port", default=5555, show_default=True, type=click.IntRange(1, 65535))
@click.option("--no-demo", is_flag=True, help="Do not register the demo model.")
def up(host: str, port: int, flower_port: int, no_demo: bool) -> None:
    """Run the whole stack in the foreground: Redis, the API, a worker and Flower."""
    from predq.keys_cmd import dev_api_key
    from predq.procs import ChildExited, Supervisor
    from predq.redis_server import RedisServer, RedisServerError

    _check_port_free(host, port, "--port")
    _check_port_free(host if _is_loopback(host) else "127.0.0.1", flower_port, "--flower-port")
    sup = Supervisor()
    redis: RedisServer | None = None
    code = 0
    with _signals_raise_stop():
        try:
            # PREDQ_REDIS_URL set in the environment or in .env: use it, start no Redis.
            if "redis_url" not in get_settings().model_fields_set:
                # Assigned before start() so that a Ctrl-C during the start still stops it.
                redis = RedisServer(dir=UP_REDIS_DIR, appendonly=True)
                _start_redis(redis)
            api_key = dev_api_key()  # None when PREDQ_API_KEYS is set or auth is off
            settings = get_settings()
            if not no_demo:
                _register_demo(settings)
            flower_address = _start_children(sup, host, port, flower_port, settings)
            base_url = f"http://{_url_host(host)}:{port}"
            flower_url = f"http://{_url_host(flower_address)}:{flower_port}"
            _wait_ready(sup, base_url, flower_url)
            _print_banner(base_url, flower_url, redis, api_key)
            _supervise(sup, redis)
        except (KeyboardInterrupt, _StopRequested):
            click.echo("\npredq up: stopping...", err=True)
        except (ChildExited, RedisServerError, TimeoutError) as e:
            click.echo(f"predq up: {e}; stopping everything", err=True)
            code = 1
        finally:
            _shutdown(sup, redis)
    if code:
        sys.exit(code)
    click.echo("predq up: stopped", err=True)


def _wait_ready(sup: Supervisor, base_url: str, flower_url: str) -> None:
    """Wait until the API and Flower answer (Flower's /healthcheck needs no password)."""
    from predq.procs import wait_for_url

    wait_for_url(f"{base_url}/healthz", timeout=UP_READY_TIMEOUT_S, children=sup.children)
    wait_for_url(f"{flower_url}/healthcheck", timeout=UP_READY_TIMEOUT_S,
                 children=sup.children)
