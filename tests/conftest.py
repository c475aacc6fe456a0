"""Fixtures of the integration tests: a real redis-server, real worker and API processes.

Nothing is faked. One redis-server runs for the whole session; each test gets its own key
prefix, queue names and registry directory, so tests never see each other's jobs or messages.

- ``redis_server`` (session): the :class:`RedisServer`. Do not stop it; a test that restarts
  Redis uses its own from ``start_redis``.
- ``settings_env`` (function) -> ``dict[str, str]``: the test's ``PREDQ_*`` values
  (``PREDQ_REDIS_URL``, ``PREDQ_KEY_PREFIX=t<hex>``, ``PREDQ_DEFAULT_QUEUE=q<hex>``,
  ``PREDQ_WEBHOOK_QUEUE=w<hex>``, ``PREDQ_REGISTRY_ROOT``), also set in this process with
  monkeypatch (every other ``PREDQ_*`` variable removed, ``get_settings`` cache cleared).
- ``redis_url`` (function) -> ``str``.
- ``env`` (function) -> ``dict[str, str]``: the environment of child processes (ours without
  ``PREDQ_*``, plus ``settings_env``). Mutable: add keys *before* starting a process; set
  them with monkeypatch too if the test process must see them.
- ``registry_with_models`` (function) -> ``Registry``: the test's registry holding ``iris``
  (alias production) and ``mixed`` (the ColumnTransformer pipeline); trained once per session.
- ``start_worker(concurrency=1, *, queues=None, hostname=None, loglevel="INFO", extra_env=None,
  timeout=60.0) -> WorkerHandle``: ``python -m predq worker``, ready once it answers a Celery
  ping; handle has ``.proc``, ``.hostname``, ``.stop(sig=SIGTERM)``, ``.kill()``, ``.tail()``.
- ``start_api(workers=1, *, extra_env=None, timeout=60.0) -> str``: ``python -m predq api`` on a
  free port, ready once ``/healthz`` answers; returns the base URL.
- ``start_redis(appendonly=False, appendfsync="everysec") -> RedisServer``: a private,
  started redis-server.

Every process runs in its own process group with ``cwd=tmp_path`` (so no ``.env`` leaks in);
at teardown each group gets SIGTERM, then SIGKILL, and the test fails if any process is left.
Child output goes to ``tmp_path/logs/*.log``; a failed test's report shows their tails.
Tests using these fixtures are marked ``integration`` automatically.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from predq.procs import Child, ChildExited, Supervisor, tail_file, wait_for_url
from predq.push import push_model
from predq.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from predq.shared.registry.store import Registry

ROOT = Path(__file__).resolve().parent.parent
_LOGS = pytest.StashKey[list[tuple[str, Path]]]()
_INTEGRATION_FIXTURES = {"redis_server", "start_worker", "start_api", "start_redis"}
#: Grace a test's children get at teardown before SIGKILL (a worker finishes its tasks).
_TEARDOWN_GRACE_S = 20.0


# -- hooks ------------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real process fixture ``integration``."""
    for item in items:
        if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    """Attach the tails of the test's process logs to a failed report."""
    report: Any = yield
    if report.failed:
        for name, path in item.stash.get(_LOGS, []):
            tail = tail_file(path, 60)
            if tail:
                report.sections.append((f"{name} log, last lines ({path})", tail))
    return report  # type: ignore[no-any-return]


# -- Redis and settings -------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _private_predq_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test, nor any process it starts, touches the real ~/.local/share/predq (the default
    PREDQ_HOME: registry, dev key, the state file of a running `predq up`)."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """No test sees settings cached from another test's environment."""
    from predq.shared.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server on a free port for the whole session."""
    with RedisServer(dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def settings_env(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """This test's ``PREDQ_*`` values, also set in-process; its Redis keys are deleted after."""
    if not redis_server.running:  # a test killed it: bring it back on the same port
        redis_server.restart()
    tag = secrets.token_hex(4)
    registry_root = tmp_path / "registry"
    registry_root.mkdir()
    values = {
        "PREDQ_REDIS_URL": redis_server.url,
        "PREDQ_KEY_PREFIX": f"t{tag}",
        "PREDQ_DEFAULT_QUEUE": f"q{tag}",
        "PREDQ_WEBHOOK_QUEUE": f"w{tag}",
        "PREDQ_REGISTRY_ROOT": str(registry_root),
    }
    for name in [n for n in os.environ if n.startswith("PREDQ_")]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    _delete_keys(redis_server, [f"t{tag}*", f"q{tag}*", f"w{tag}*", f"_kombu.binding.?{tag}*"])


def _delete_keys(server: RedisServer, patterns: Sequence[str]) -> None:
    if not server.running:
        return
    client = server.client()
    try:
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_url(settings_env: dict[str, str]) -> str:
    return settings_env["PREDQ_REDIS_URL"]


@pytest.fixture
def env(settings_env: dict[str, str]) -> dict[str, str]:
    """The environment of this test's child processes (mutable; see the module docstring)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    pythonpath = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)
    return {**base, **settings_env, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory of private redis-servers (for tests that stop, kill or restart Redis)."""
    servers: list[RedisServer] = []

    def start(appendonly: bool = False, appendfsync: str = "everysec") -> RedisServer:
        server = RedisServer(dir=tmp_path / f"redis-{len(servers)}", appendonly=appendonly,
                             appendfsync=appendfsync)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()


# -- models -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with iris and mixed, trained and pushed once per session."""
    from predq.demo import train_demo_model, train_mixed_pipeline, write_demo_sample
    from predq.shared.registry.serialization import dump_estimator
    from predq.shared.registry.store import Registry

    work = tmp_path_factory.mktemp("models")
    registry = Registry(work / "registry")
    iris, mixed = work / "iris.joblib", work / "mixed.joblib"
    dump_estimator(train_demo_model(), iris, "joblib")
    dump_estimator(train_mixed_pipeline(), mixed, "joblib")
    # iris exactly as predq.demo.ensure_demo registers it for `predq up`.
    push_model(registry, iris, "iris", aliases=("production",), accepts_missing=False,
                  sample_csv=write_demo_sample(work / "iris.csv"))
    push_model(registry, mixed, "mixed")
    return registry.root


@pytest.fixture
def registry_with_models(settings_env: dict[str, str], _registry_template: Path) -> Registry:
    """The test's registry (``PREDQ_REGISTRY_ROOT``) holding ``iris`` and ``mixed``."""
    from predq.shared.registry.store import Registry

    root = Path(settings_env["PREDQ_REGISTRY_ROOT"])
    shutil.copytree(_registry_template, root, dirs_exist_ok=True)
    return Registry(root)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Processes:
    """The child processes of one test, with their log files."""

    supervisor: Supervisor
    log_dir: Path
    logs: list[tuple[str, Path]]

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> Child:
        log_path = self.log_dir / f"{name}-{len(self.logs)}.log"
        self.logs.append((name, log_path))
        argv = [sys.executable, "-m", "predq", *args]
        return self.supervisor.start(name, argv, env=env, cwd=cwd, log_path=log_path)


@pytest.fixture
def processes(
    request: pytest.FixtureRequest, tmp_path: Path, settings_env: dict[str, str]
) -> Iterator[Processes]:
    """Every process a test starts; all stopped at teardown, and none may be left.

    Depends on ``settings_env`` so that the processes stop before the test's keys are deleted.
    """
    logs: list[tuple[str, Path]] = []
    request.node.stash[_LOGS] = logs
    procs = Processes(Supervisor(), tmp_path / "logs", logs)
    yield procs
    procs.supervisor.stop_all(timeout=_TEARDOWN_GRACE_S)
    left = {c.name: c.group_pids() for c in procs.supervisor.children if c.group_pids()}
    if left:
        pytest.fail(f"processes left behind after teardown: {left}")


@dataclass
class WorkerHandle:
    """A running ``predq worker`` (leader of its own process group)."""

    child: Child
    hostname: str

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.child.proc

    def alive(self) -> bool:
        return self.child.alive()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = _TEARDOWN_GRACE_S) -> int | None:
        """Signal the worker's group (SIGTERM: warm shutdown), SIGKILL after ``timeout``."""
        return self.child.stop(sig, timeout=timeout)

    def kill(self) -> int | None:
        """SIGKILL the worker and its pool at once, as a crash would."""
        return self.child.kill()

    def tail(self, lines: int = 40) -> str:
        return self.child.tail(lines)


@pytest.fixture
def start_worker(
    processes: Processes, env: dict[str, str], tmp_path: Path
) -> Callable[..., WorkerHandle]:
    """Factory: start ``python -m predq worker`` and wait until it consumes.

    ``queues=None`` lets the worker take its default (the test's predict and webhook queues).
    """

    def start(
        concurrency: int = 1,
        *,
        queues: Sequence[str] | None = None,
        hostname: str | None = None,
        loglevel: str = "INFO",
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> WorkerHandle:
        from celery.utils.nodenames import host_format

        name = host_format(hostname or f"w{secrets.token_hex(4)}@%h")
        args = ["worker", "--concurrency", str(concurrency), "--hostname", name,
                "--loglevel", loglevel]
        if queues is not None:
            args += ["--queues", ",".join(queues)]
        child_env = {**env, **(extra_env or {})}
        child = processes.start("worker", args, child_env, tmp_path)
        _wait_worker_ready(child, name, child_env["PREDQ_REDIS_URL"], timeout)
        return WorkerHandle(child=child, hostname=name)

    return start


def _wait_worker_ready(child: Child, name: str, redis_url: str, timeout: float) -> None:
    """Wait until ``name`` answers a Celery ping (its consumer loop runs) or logs 'ready.'."""
    from celery import Celery

    # Remote control goes through the broker's pidbox, independent of the app's queues.
    app = Celery("predq-tests", broker=redis_url, set_as_current=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            child.check()
            if app.control.ping(destination=[name], timeout=0.5):
                return
            if child.log_path and f"{name} ready." in tail_file(child.log_path, 200):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"worker {name} not ready in {timeout:g}s")
    except ChildExited as e:
        raise AssertionError(f"worker {name} exited while starting: {e}") from e
    finally:
        app.close()


@pytest.fixture
def start_api(processes: Processes, env: dict[str, str], tmp_path: Path) -> Callable[..., str]:
    """Factory: start ``python -m predq api`` on a free port; returns its base URL."""

    def start(
        workers: int = 1, *, extra_env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> str:
        port = free_port()
        args = ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        child = processes.start("api", args, {**env, **(extra_env or {})}, tmp_path)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_for_url(f"{base_url}/healthz", timeout=timeout, children=[child])
        except ChildExited as e:
            raise AssertionError(f"the API exited while starting: {e}") from e
        return base_url

    return start


# -- API keys -------------------------------------------------------------------------------


def configure_keys(target_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
                   ) -> dict[str, str]:
    """Configure API keys (as hashes only) in ``target_env`` and this process; returns the
    plaintext keys: ``user`` and ``other`` (jobs and models scopes) and ``admin``."""
    import orjson

    from predq.api.security.apikeys import key_spec, new_key

    plain = {"user": new_key(), "other": new_key(), "admin": new_key()}
    user_scopes = ("jobs:write", "jobs:read", "models:read")
    specs = [key_spec("user", plain["user"], user_scopes),
             key_spec("other", plain["other"], user_scopes),
             key_spec("admin", plain["admin"], ("admin",))]
    value = orjson.dumps([spec.model_dump() for spec in specs]).decode()
    target_env["PREDQ_API_KEYS"] = value
    monkeypatch.setenv("PREDQ_API_KEYS", value)
    return plain


@pytest.fixture
def keys(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """API keys configured for the test's processes (see :func:`configure_keys`)."""
    return configure_keys(env, monkeypatch)
