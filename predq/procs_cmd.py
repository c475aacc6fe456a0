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
import secrets
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

from predq.shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

    from predq.procs import Supervisor
    from predq.redis_server import RedisServer

#: Seconds ``up`` gives its children to exit after SIGTERM before it sends SIGKILL.
UP_STOP_GRACE_S = 15.0
#: Seconds ``up`` waits for the API's /healthz after starting it.
UP_READY_TIMEOUT_S = 90.0
#: Where ``up`` keeps its own Redis's data (an append-only file), under PREDQ_HOME: the
#: same whatever the current directory, so jobs and results survive a restart.
UP_REDIS_DIR = "redis"

DEMO_INPUT = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as exposed


def _celery_app(settings: Settings) -> Celery:
    from predq.worker.app import create_app

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
    """Run the HTTP API (uvicorn, predq.api.app:create_app)."""
    import uvicorn

    from predq.ops import prepare_api_process

    settings = get_settings()
    if not settings.auth_enabled and not _is_loopback(host) and not allow_open:
        raise click.ClickException(
            f"refusing to serve without authentication on {host}: PREDQ_AUTH_ENABLED=false "
            "is for loopback only (pass --allow-unauthenticated to override)")
    prepare_api_process(settings, workers)
    uvicorn.run(
        "predq.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=math.ceil(settings.api_shutdown_grace_s),
        access_log=False,  # the app logs each request itself
        # predq.shared.observability.logs configures every logger, uvicorn's included
        log_config=None,
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
    # A worker serving a predict queue also takes its batch-file lane
    # (predq.worker.batchfiles.lane).
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
    else:
        click.echo("predq flower: no PREDQ_FLOWER_BASIC_AUTH, so the UI needs no password on "
                   f"{address} and Flower's HTTP API (/api/...) answers 401; set "
                   "PREDQ_FLOWER_BASIC_AUTH=user:password to use both with a login", err=True)
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
    from predq.shared.registry.store import Registry

    ensure_demo(Registry(settings.registry_root))


#: The Flower user ``predq up`` makes when PREDQ_FLOWER_BASIC_AUTH is not set.
UP_FLOWER_USER = "predq"


def _refuse_second_stack(settings: Settings) -> None:
    from predq.stack import read_state, state_path

    state = read_state(settings.home)
    if state is not None:
        raise click.UsageError(
            f"predq up is already running (pid {state.get('pid')}, API {state.get('api_url')}; "
            f"see {state_path(settings.home)}). Stop it first, or give this one its own "
            "PREDQ_HOME.")


def _start_children(
    sup: Supervisor, host: str, port: int, flower_port: int, settings: Settings
) -> tuple[str, str | None]:
    """Start api, worker and flower; return the address Flower listens on, and the
    ``user:password`` made for it (None when PREDQ_FLOWER_BASIC_AUTH gives one).

    Flower always gets a password under ``predq up``, so its UI and its HTTP API (which
    Flower answers 401 without one) use the same credentials. Opening the API without a
    password (FLOWER_UNAUTHENTICATED_API) would let any web page the user visits read the
    tasks and shut the workers down, as Flower then allows cross-origin requests.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    predq = [sys.executable, "-m", "predq"]
    flower_address = host
    made: str | None = None
    flower_env = env
    if not settings.flower_basic_auth:
        made = f"{UP_FLOWER_USER}:{secrets.token_urlsafe(12)}"
        flower_env = {**env, "PREDQ_FLOWER_BASIC_AUTH": made}
        if not _is_loopback(host):
            flower_address = "127.0.0.1"
            click.echo("predq up: Flower stays on 127.0.0.1 (set PREDQ_FLOWER_BASIC_AUTH to "
                       "expose it)", err=True)
    sup.start("api", [*predq, "api", "--host", host, "--port", str(port)], env=env,
              prefix="api   ")
    sup.start("worker", [*predq, "worker"], env=env, prefix="worker")
    sup.start("flower", [*predq, "flower", "--port", str(flower_port),
                         "--address", flower_address], env=flower_env, prefix="flower")
    return flower_address, made


def _print_banner(base_url: str, flower_url: str, redis: RedisServer | None,
                  api_key: str | None = None, key_file: Path | None = None,
                  settings: Settings | None = None,
                  flower_auth: str | None = None) -> None:
    from predq.shared.redis_conn import display_url

    settings = settings or get_settings()
    curl = demo_curl(base_url, api_key)
    if api_key and key_file is not None:
        key_note = (f"          (the development key, every scope; kept across restarts in\n"
                    f"          {key_file} (0600): `predq keys dev` prints it)\n")
    else:
        key_note = ("          (a development key with every scope, for this run only; set\n"
                    "          PREDQ_API_KEYS to use your own: see `predq keys create`)\n")
    key_line = f"  Key     {api_key}\n{key_note}" if api_key else ""
    flower_login = (
        f"  Flower login  {flower_auth}  (user:password of its UI and HTTP API, for this run;\n"
        "          set PREDQ_FLOWER_BASIC_AUTH=user:password to choose them)\n"
        if flower_auth else
        "  Flower login  PREDQ_FLOWER_BASIC_AUTH (its UI and HTTP API)\n"
    )
    redis_line = (
        f"{redis.url} (started by predq up, data in {redis.dir})"
        if redis is not None
        else f"{display_url(settings.redis_url)} (PREDQ_REDIS_URL)"
    )
    click.echo(
        "\n"
        "predq is up:\n"
        f"  API     {base_url}\n"
        f"  Docs    {base_url}/docs\n"
        f"  Flower  {flower_url}\n"
        f"{flower_login}"
        f"  Redis   {redis_line}\n"
        f"  Models  {settings.registry_root} (PREDQ_REGISTRY_ROOT)\n"
        f"{key_line}"
        "\n"
        "Other predq commands (models push, healthcheck...) use this stack's Redis and\n"
        "registry by themselves, from any directory, while it runs.\n"
        f"{_path_hint()}"
        "\n"
        "Submit a job to the demo model:\n"
        f"  {curl.submit}\n"
        "Then fetch its result (JOB_ID is the \"id\" of the reply):\n"
        f"  {curl.fetch}\n"
        "\n"
        "Press Ctrl-C to stop.\n"
    )


def _path_hint() -> str:
    """How to get ``predq`` on PATH in another terminal, when it is not there already."""
    import shutil

    here = Path(sys.executable).parent / "predq"
    found = shutil.which("predq")
    if not here.exists() or (found and Path(found).resolve() == here.resolve()):
        return ""
    activate = here.parent / "activate"
    if activate.exists():
        return (f"In another terminal, put predq on your PATH first:\n"
                f"  source {shlex.quote(str(activate))}\n")
    return f"In another terminal, run predq as {shlex.quote(str(here))}\n"


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
@click.option("--new-key", is_flag=True,
              help="Replace the saved development key (PREDQ_HOME/dev-key) with a new one.")
@click.option("--ephemeral-key", is_flag=True,
              help="Use a development key for this run only; save nothing.")
def up(host: str, port: int, flower_port: int, no_demo: bool, new_key: bool,
       ephemeral_key: bool) -> None:
    """Run the whole stack in the foreground: Redis, the API, a worker and Flower.

    Redis data, the state file other commands read (up.json) and the development key live in
    PREDQ_HOME; the registry is PREDQ_REGISTRY_ROOT.
    """
    from predq.keys_cmd import dev_api_key, dev_key_path
    from predq.procs import ChildExited, Supervisor
    from predq.redis_server import RedisServer, RedisServerError
    from predq.stack import remove_state, write_state

    home = get_settings().home
    _refuse_second_stack(get_settings())
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
                # PREDQ_DURABLE_SUBMIT: every write fsynced before its reply (no WAITAOF
                # needed, whatever the Redis version).
                fsync = "always" if get_settings().durable_submit else "everysec"
                redis = RedisServer(dir=home / UP_REDIS_DIR, appendonly=True, appendfsync=fsync)
                _start_redis(redis)
            # None when PREDQ_API_KEYS is set or auth is off
            api_key = dev_api_key(None if ephemeral_key else home, new=new_key)
            key_file = dev_key_path(home) if api_key and not ephemeral_key else None
            settings = get_settings()
            if not no_demo:
                _register_demo(settings)
            flower_address, flower_auth = _start_children(sup, host, port, flower_port,
                                                          settings)
            base_url = f"http://{_url_host(host)}:{port}"
            flower_url = f"http://{_url_host(flower_address)}:{flower_port}"
            _wait_ready(sup, base_url, flower_url)
            write_state(home, redis_url=settings.redis_url, api_url=base_url,
                        flower_url=flower_url, registry_root=str(settings.registry_root),
                        key_prefix=settings.key_prefix)
            _print_banner(base_url, flower_url, redis, api_key, key_file, settings, flower_auth)
            _supervise(sup, redis)
        except (KeyboardInterrupt, _StopRequested):
            click.echo("\npredq up: stopping...", err=True)
        except (ChildExited, RedisServerError, TimeoutError) as e:
            click.echo(f"predq up: {e}; stopping everything", err=True)
            code = 1
        finally:
            remove_state(home)
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
