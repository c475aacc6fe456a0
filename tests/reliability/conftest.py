"""Fixtures and helpers of the reliability tests (issue 5, FAULTS).

Everything is real: a redis-server, ``python -m predq api`` and ``python -m predq worker``
processes, models loaded from a registry directory. The faults are real too: SIGKILL of pool
processes and whole workers, a Redis stop/restart on the same port with its append-only file,
models that raise, return the wrong number of rows, sleep, or kill their own process
(:mod:`tests.helpers.faulty`, :mod:`tests.helpers.killer`).

Helpers here:

- ``keys``: API keys for the test's processes (user, admin), as in tests/e2e.
- ``push``: ``push(name, kind, **kw)`` registers a faulty model in the test's registry:
  ``kind`` is ``"killer"`` (:class:`tests.helpers.killer.Killer`, ``delay``/``noisy``) or a
  :class:`tests.helpers.faulty.Faulty` mode (``"raise"``, ``"short"``, ``"slow"``, ``delay``).
- ``rstack``: ``rstack(workers=1, concurrency=1, **env)`` -> :class:`RStack` (workers first,
  then the API, all ready) with :class:`Api` clients; every process gets the same extra
  ``PREDQ_*`` values, and ``RStack.add_worker()`` starts another one with them.
- :class:`Api`: a bounded httpx client that records every ``outputs`` it ever read per job,
  so :meth:`Api.assert_no_double_results` can prove no job showed two different results.
- :func:`job_hash` / :func:`broker_state` / :func:`diagnose`: the raw job hash and where the
  job's Celery message is (kombu's ``unacked`` hash), for failure messages and signatures.
- :func:`pool_pids`: the prefork pool processes of a worker (children of its main process).

Every wait here is bounded by a deadline (``time.monotonic``) and a maximum iteration count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import orjson
import pytest
import redis

from predq.demo import iris_sample_rows
from predq.procs import child_pids
from predq.push import push_model

#: Statuses after which a job never changes again.
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})


# -- API keys and models ------------------------------------------------------------------


@pytest.fixture
def push(registry_with_models: Any, tmp_path: Path) -> Callable[..., Any]:
    """``push(name, kind, **kw)``: register a faulty model (see the module docstring)."""

    def do(name: str, kind: str, **kw: Any) -> Any:
        if kind == "killer":
            from tests.helpers.killer import train as train_killer

            est = train_killer(**kw)
        else:
            from tests.helpers.faulty import train as train_faulty

            est = train_faulty(kind, **kw)
        path = tmp_path / f"{name}-{kind}.joblib"
        joblib.dump(est, path)
        return push_model(registry_with_models, path, name)

    return do


def xrows(n: int, x1: float = 1.0) -> list[dict[str, float]]:
    """``n`` rows for the faulty/killer models (features x1, x2)."""
    return [{"x1": x1, "x2": float(i % 2)} for i in range(n)]


def irows(n: int, seed: int = 0) -> list[dict[str, float]]:
    return iris_sample_rows(n, seed=seed)


# -- the client -------------------------------------------------------------------------------


@dataclass
class Api:
    """A bounded client of one API process that remembers every result it read."""

    base_url: str
    headers: dict[str, str]
    timeout: float = 10.0
    seen: dict[str, set[bytes]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c = httpx.Client(base_url=self.base_url, headers=self.headers,
                              timeout=self.timeout, trust_env=False)

    def close(self) -> None:
        self.c.close()

    def post_job(self, model: str, rows: list[dict[str, Any]], *,
                 headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        return self.c.post(f"/v1/models/{model}/jobs", json={"inputs": rows, **body},
                           headers=headers)

    def submit(self, model: str, rows: list[dict[str, Any]], **body: Any) -> str:
        r = self.post_job(model, rows, **body)
        assert r.status_code == 202, f"submit to {model}: {r.status_code} {r.text}"
        return str(r.json()["id"])

    def get(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        params = {"wait": wait} if wait else None
        timeout = self.timeout + (wait or 0)
        r = self.c.get(f"/v1/jobs/{job_id}", params=params, timeout=timeout)
        assert r.status_code == 200, f"GET {job_id}: {r.status_code} {r.text}"
        job = r.json()
        self._record(job_id, job)
        return job

    def _record(self, job_id: str, job: dict[str, Any]) -> None:
        self.last[job_id] = job
        if job.get("outputs") is not None:
            self.seen.setdefault(job_id, set()).add(orjson.dumps(job["outputs"]))
        elif job["status"] in TERMINAL:
            # a terminal job without outputs: remember that too (a later read must agree)
            self.seen.setdefault(job_id, set()).add(orjson.dumps(job["status"]))

    def delete(self, job_id: str) -> httpx.Response:
        return self.c.delete(f"/v1/jobs/{job_id}")

    def wait_status(self, job_id: str, statuses: Iterable[str], timeout: float,
                    poll: float = 0.1) -> dict[str, Any]:
        """Poll (bounded) until the job's status is one of ``statuses``; its last view."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        for _ in range(int(timeout / poll) + 10):
            job = self.get(job_id)
            if job["status"] in wanted or time.monotonic() >= deadline:
                break
            time.sleep(poll)
        return job

    def wait_all(self, job_ids: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Long-poll each job until it is terminal or ``timeout`` s (for all) have passed.

        Returns the last view of every job (terminal or not); never raises on a timeout, so
        the caller can report exactly which jobs were stuck.
        """
        ids = list(job_ids)
        deadline = time.monotonic() + timeout
        out: dict[str, dict[str, Any]] = {}
        for job_id in ids:
            for _ in range(int(timeout) + 5):  # each pass waits up to ~5 s
                left = deadline - time.monotonic()
                job = self.get(job_id, wait=max(0.1, min(5.0, left)) if left > 0 else None)
                out[job_id] = job
                if job["status"] in TERMINAL or left <= 0:
                    break
        return out

    def reread(self, job_ids: Iterable[str]) -> None:
        """Read every job once more (records its outputs again)."""
        for job_id in job_ids:
            self.get(job_id)

    def assert_no_double_results(self) -> None:
        """No job ever showed two different terminal results to this client."""
        doubles = {j: len(v) for j, v in self.seen.items() if len(v) > 1}
        assert not doubles, f"jobs that showed more than one result: {doubles}"


@dataclass
class RStack:
    base_url: str
    api: Api
    admin: Api
    workers: list[Any]
    env: dict[str, str]
    start_worker: Callable[..., Any]

    def add_worker(self, concurrency: int = 1, **kw: Any) -> Any:
        w = self.start_worker(concurrency, extra_env=self.env, **kw)
        self.workers.append(w)
        return w


@pytest.fixture
def rstack(registry_with_models: Any, keys: dict[str, str], start_worker: Callable[..., Any],
           start_api: Callable[..., str]) -> Any:
    """``rstack(workers=1, concurrency=1, **env)``: workers first, then the API; ready."""
    made: list[Api] = []

    def start(workers: int = 1, concurrency: int = 1, **extra_env: str) -> RStack:
        procs = [start_worker(concurrency, extra_env=extra_env) for _ in range(workers)]
        base = start_api(extra_env=extra_env)
        api = Api(base, {"Authorization": f"Bearer {keys['user']}"})
        admin = Api(base, {"Authorization": f"Bearer {keys['admin']}"})
        made.extend([api, admin])
        return RStack(base, api, admin, procs, dict(extra_env), start_worker)

    yield start
    for a in made:
        a.close()


# -- processes and Redis state ----------------------------------------------------------------


def pool_pids(worker: Any, timeout: float = 20.0) -> list[int]:
    """The prefork pool processes of a ``predq worker`` (children of its main process)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        pids = child_pids(worker.child.pid)
        if pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.1)
    return []


def job_hash(redis_url: str, prefix: str, job_id: str) -> dict[str, str]:
    """The job's Redis hash (without the input bytes), decoded, for diagnostics."""
    client = redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        raw = client.hgetall(f"{prefix}:job:{job_id}")
    finally:
        client.close()
    return {k.decode(): (v.decode(errors="replace") if k != b"inputs" else f"<{len(v)} bytes>")
            for k, v in raw.items()}


def broker_state(redis_url: str, job_ids: Iterable[str]) -> dict[str, str]:
    """Where each job's Celery message is in the broker: ``unacked <age> s`` (kombu's
    ``unacked`` hash: delivered to a worker, not acknowledged; restored by a sweep once older
    than the visibility timeout), or ``no message``."""
    wanted = set(job_ids)
    out = dict.fromkeys(wanted, "no unacked message")
    client = redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        now = time.time()
        scores = dict(client.zrange("unacked_index", 0, -1, withscores=True))
        for tag, raw in client.hscan_iter("unacked", count=1000):
            try:
                msg = orjson.loads(raw)[0]
                task_id = msg["headers"]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            if task_id in wanted:
                age = now - scores.get(tag, now)
                out[task_id] = f"unacked for {age:.1f} s"
    finally:
        client.close()
    return out


def diagnose(redis_url: str, prefix: str, jobs: dict[str, dict[str, Any]]) -> str:
    """The stored state of every non-terminal or unexpected job, for an assertion message."""
    lines = []
    broker = broker_state(redis_url, jobs)
    for job_id, view in jobs.items():
        lines.append(f"{job_id}: api={view.get('status')} err={view.get('error')} "
                     f"broker={broker[job_id]} redis={job_hash(redis_url, prefix, job_id)}")
    return "\n".join(lines)


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / poll) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return False
