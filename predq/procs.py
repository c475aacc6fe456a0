"""Process supervision shared by ``predq up``, :mod:`predq.redis_server` and the tests.

Contracts:

- Every child runs in its own session, hence its own process group whose id is the child's pid.
  Stopping a child signals the whole group, so a Celery prefork pool or uvicorn's worker
  processes go with their parent, and a terminal's Ctrl-C reaches only the supervisor, which
  then stops the children in order.
- :func:`stop_all` never leaves a process behind: it sends the signal (SIGTERM by default),
  waits until the leader is reaped *and* no live member of the group remains, and sends SIGKILL
  to whatever is left when the grace period ends (or as soon as ``hurry()`` turns true).
- The waits poll with a short sleep and use :func:`time.monotonic` deadlines.
- POSIX only (process groups). Group membership is read from ``/proc`` where it exists, so
  zombies (dead, not yet reaped by init) do not count as alive.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

_POLL_S = 0.05
_KILL_WAIT_S = 5.0
_STDOUT_LOCK = threading.Lock()


class ChildExited(RuntimeError):
    """A supervised child ended while it was expected to run (or to become ready)."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.returncode = child.proc.returncode
        super().__init__(f"the {child.name} process (pid {child.pid}) exited with code "
                         f"{_describe_code(self.returncode)}")


def _describe_code(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


@dataclass(eq=False)
class Child:
    """One supervised child process, the leader of its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pgid(self) -> int:
        """The process group id: equal to the pid, since the child leads its own session."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        """Whether the leader process still runs (its group may outlive it; see ``stop``)."""
        return self.proc.poll() is None

    def group_pids(self) -> list[int]:
        """The live processes of the child's group (the leader, pool children, ...)."""
        return group_pids(self.pgid)

    def check(self) -> None:
        """Raise :class:`ChildExited` if the leader has ended."""
        if not self.alive():
            raise ChildExited(self)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the whole group; a group that is already gone is not an error."""
        _killpg(self.pgid, sig)

    def stop(
        self, sig: int = signal.SIGTERM, timeout: float = 10.0,
        hurry: Callable[[], bool] | None = None,
    ) -> int | None:
        """Stop the group: ``sig``, up to ``timeout`` s of grace, then SIGKILL. Returns the code."""
        stop_all([self], sig=sig, timeout=timeout, hurry=hurry)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole group at once and reap the leader."""
        return self.stop(signal.SIGKILL, timeout=_KILL_WAIT_S)

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the child's log file ('' without a log file)."""
        return tail_file(self.log_path, lines) if self.log_path else ""


def start_child(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    log_path: Path | None = None,
    prefix: str | None = None,
) -> Child:
    """Start ``argv`` as the leader of a new session (and so of a new process group).

    Output: with ``log_path``, stdout and stderr are appended to that file; with ``prefix``,
    each output line is copied to our stdout as ``"<prefix> | <line>"`` by a daemon thread;
    with neither, the child inherits our stdout and stderr. stdin is always /dev/null.
    """
    if log_path is not None and prefix is not None:
        raise ValueError("give log_path or prefix, not both")
    stdout: int | IO[bytes] | None = None
    log_file: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Closed below once the child holds its own copy of the descriptor.
        log_file = stdout = open(log_path, "ab")
    elif prefix is not None:
        stdout = subprocess.PIPE
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
    finally:
        if log_file is not None:
            log_file.close()
    child = Child(name=name, proc=proc, log_path=log_path)
    if prefix is not None:
        assert proc.stdout is not None
        child._pump = threading.Thread(
            target=_pump_lines, args=(proc.stdout, prefix), name=f"pump-{name}", daemon=True
        )
        child._pump.start()
    return child


def _pump_lines(stream: IO[bytes], prefix: str) -> None:
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with _STDOUT_LOCK:
                sys.stdout.write(f"{prefix} | {line}\n")
                sys.stdout.flush()


def stop_all(
    children: Iterable[Child],
    *,
    sig: int = signal.SIGTERM,
    timeout: float = 10.0,
    hurry: Callable[[], bool] | None = None,
) -> None:
    """Stop several children at once: ``sig`` to every group, one shared grace period, SIGKILL.

    Returns only when every leader is reaped and every group is empty (or, in the pathological
    case of a process stuck in uninterruptible sleep, after a further few seconds).
    """
    all_children = list(children)
    for child in all_children:
        if child.alive() or child.group_pids():
            child.send_signal(sig)
    deadline = time.monotonic() + timeout
    pending = _wait_stopped(all_children, deadline, hurry)
    if pending:
        for child in pending:
            child.send_signal(signal.SIGKILL)
        _wait_stopped(pending, time.monotonic() + _KILL_WAIT_S, None)
    for child in all_children:
        if child._pump is not None:
            child._pump.join(timeout=1.0)


def _wait_stopped(
    children: list[Child], deadline: float, hurry: Callable[[], bool] | None
) -> list[Child]:
    """Wait until each child's leader is reaped and its group empty; return those still alive."""
    pending = list(children)
    while pending:
        pending = [c for c in pending if c.proc.poll() is None or c.group_pids()]
        if not pending or time.monotonic() >= deadline or (hurry is not None and hurry()):
            break
        time.sleep(_POLL_S)
    return pending


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        # Gone already (PermissionError: the id was reused by someone else's process group).
        pass


def group_pids(pgid: int) -> list[int]:
    """The pids of the live (non-zombie) processes of process group ``pgid``.

    Reads ``/proc`` on Linux. Elsewhere it can only tell whether the group exists, and then
    returns ``[pgid]`` for a group with any member.
    """
    proc_root = Path("/proc")
    if not (proc_root / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    return [pid for pid, _ppid, pgrp in _proc_table() if pgrp == pgid]


def child_pids(ppid: int) -> list[int]:
    """The pids of the live direct children of ``ppid`` (Linux only; [] elsewhere)."""
    return [pid for pid, parent, _pgrp in _proc_table() if parent == ppid]


def _proc_table() -> list[tuple[int, int, int]]:
    """``(pid, ppid, pgrp)`` of every live, non-zombie process, read from ``/proc``."""
    rows: list[tuple[int, int, int]] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return rows
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # ended while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 3 or fields[0] in (b"Z", b"X"):
            continue
        rows.append((int(entry), int(fields[1]), int(fields[2])))
    return rows


def wait_for_url(
    url: str,
    *,
    timeout: float = 60.0,
    children: Iterable[Child] = (),
    ok: Callable[[httpx.Response], bool] | None = None,
) -> httpx.Response:
    """Poll ``GET url`` until it answers 200 (or ``ok(response)``); return that response.

    Raises :class:`ChildExited` as soon as one of ``children`` ends, and :class:`TimeoutError`
    after ``timeout`` seconds.
    """
    watched = list(children)
    accept = ok or (lambda r: r.status_code == 200)
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            for child in watched:
                child.check()
            try:
                response = client.get(url)
                if accept(response):
                    return response
                last = f"status {response.status_code}"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{url} did not become ready in {timeout:g}s ({last})")
            time.sleep(0.1)


def wait_for_port(
    host: str, port: int, *, timeout: float = 30.0, children: Iterable[Child] = ()
) -> None:
    """Wait until a TCP connection to ``host:port`` succeeds (see :func:`wait_for_url`)."""
    watched = list(children)
    deadline = time.monotonic() + timeout
    while True:
        for child in watched:
            child.check()
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{host}:{port} did not accept connections in "
                                   f"{timeout:g}s ({e})") from e
        time.sleep(0.05)


def tail_file(path: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of ``path`` (read from at most its last ``max_bytes``)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


class Supervisor:
    """A set of children started together and stopped together (``predq up``, the tests).

    Use as a context manager: leaving the block stops every child it started.
    """

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        log_path: Path | None = None,
        prefix: str | None = None,
    ) -> Child:
        """:func:`start_child`, remembering the child so that :meth:`stop_all` stops it."""
        child = start_child(name, argv, env=env, cwd=cwd, log_path=log_path, prefix=prefix)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        """The first child whose leader has ended, if any."""
        return next((c for c in self.children if not c.alive()), None)

    def stop_all(
        self, *, sig: int = signal.SIGTERM, timeout: float = 10.0,
        hurry: Callable[[], bool] | None = None,
    ) -> None:
        """Stop every child (see :func:`stop_all`)."""
        stop_all(self.children, sig=sig, timeout=timeout, hurry=hurry)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
