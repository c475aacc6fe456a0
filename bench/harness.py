"""The stack the measurements of ``bench.scale`` and ``bench.pools`` run against.

One Redis (``predq.redis_server.RedisServer``, a free port), one temporary registry, one
API (``python -m predq api``) and as many workers as a measurement needs, each started as
``python -m predq worker`` (or through ``bench.poolworker`` for a Celery pool other than
prefork), each the leader of its own process group. Every model is routed to its own queue
(``PREDQ_MODEL_QUEUES``), so the variants being compared can all stay up for the whole run
and alternate round by round on the same API: an idle worker costs ~0.

The load is ``bench.load`` (its own process) with a ``--bodies`` file, so every reply is
checked against the local ``predict_proba`` / ``predict`` (a wrong reply is an error, not a
completion). CPU per job comes from ``/proc`` over the measured window only, per process
group; jobs per predict call from the job store's batch counters (deltas per phase).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from predq.procs import Child, Supervisor, wait_for_url
from predq.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "bench"


def log(tag: str, msg: str) -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def kb(path: str, key: str) -> int:
    """A ``Key:  123 kB`` field of a /proc file, in kB (0 when absent)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_of(pid: int) -> dict[str, float]:
    """VmRSS, PSS, anonymous and shared MB of one process. PSS splits shared pages between
    the processes that map them. Anonymous counts heap pages, those still shared copy-on-write
    with the parent included, and no file pages (a memory-mapped model's arrays are file
    pages: the page cache holds them once for every process that maps the same file)."""
    rollup = f"/proc/{pid}/smaps_rollup"
    return {"rss_mb": kb(f"/proc/{pid}/status", "VmRSS") / 1024,
            "pss_mb": kb(rollup, "Pss") / 1024,
            "anon_mb": kb(rollup, "Anonymous") / 1024,
            "shared_mb": (kb(rollup, "Shared_Clean") + kb(rollup, "Shared_Dirty")) / 1024}


class Stack:
    """Redis, a registry, one API and named workers, all on 127.0.0.1 (see the module doc)."""

    def __init__(self, tmp: Path, model_queues: dict[str, str], *,
                 env: dict[str, str] | None = None, tag: str = "bench") -> None:
        from predq.shared.registry.store import Registry

        self.tmp = tmp
        self.tag = tag
        self.registry = Registry(tmp / "registry")
        self.redis = RedisServer(dir=tmp / "redis").start()
        self.sup = Supervisor()
        self.workers: dict[str, Child] = {}
        self.api: Child | None = None
        self.url = ""
        self.env = {
            **os.environ,
            "PREDQ_REDIS_URL": self.redis.url,
            "PREDQ_REGISTRY_ROOT": str(self.registry.root),
            "PREDQ_KEY_PREFIX": PREFIX,
            "PREDQ_MODEL_QUEUES": json.dumps(model_queues),
            "PREDQ_AUTH_ENABLED": "false",
            # All clients share 127.0.0.1: a limit they never reach (the limiter still runs).
            "PREDQ_RATE_LIMIT": "1000000/second",
            **(env or {}),
        }
        (tmp / "logs").mkdir(parents=True, exist_ok=True)

    def push(self, model_file: Path, name: str, runtime: str) -> Any:
        from predq.push import push_model

        m = push_model(self.registry, model_file, name, runtime=runtime)
        log(self.tag, f"pushed {name} v{m.version}: runtime {m.runtime.summary()}")
        return m

    def start_api(self) -> str:
        port = free_port()
        self.api = self.sup.start(
            "api", [sys.executable, "-m", "predq", "api", "--host", "127.0.0.1",
                    "--port", str(port)],
            env=self.env, cwd=self.tmp, log_path=self.tmp / "logs" / "api.log")
        self.url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{self.url}/healthz", timeout=90, children=[self.api])
        return self.url

    def start_worker(self, name: str, queues: list[str], *, concurrency: int | None = None,
                     pool: str = "prefork", env: dict[str, str] | None = None) -> Child:
        """``predq worker --queues ... [-c N]``; another Celery pool through bench.poolworker."""
        launcher = (["-m", "predq", "worker"] if pool == "prefork"
                    else ["-m", "bench.poolworker", pool])
        argv = [sys.executable, *launcher, "--queues", ",".join(queues),
                "--hostname", f"{name}@%h"]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        # bench.poolworker is imported from the repository (cwd); the others run in tmp.
        child = self.sup.start(name, argv, env={**self.env, **(env or {}),
                                                "PYTHONPATH": str(ROOT)},
                               cwd=self.tmp, log_path=self.tmp / "logs" / f"{name}.log")
        self.workers[name] = child
        return child

    def wait_ready(self, models: list[str], body: bytes, timeout: float = 180.0) -> None:
        """Until each model answers a /predict (its worker consumes, its model is loaded)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, trust_env=False, timeout=30) as h:
            for model in models:
                while True:  # bounded by the deadline
                    for c in self.workers.values():
                        c.check()
                    try:
                        r = h.post(f"/v1/models/{model}/predict?wait=10", content=body,
                                   headers={"Content-Type": "application/json"})
                        if r.status_code == 200:
                            break
                        why = f"{r.status_code} {r.text[:300]}"
                    except httpx.HTTPError as e:
                        why = repr(e)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{model} not served: {why}")
                    time.sleep(0.5)

    def batch_counters(self) -> dict[str, int]:
        c = self.redis.client(socket_timeout=5)
        try:
            raw = c.hgetall(f"{PREFIX}:stats:batches")
        finally:
            c.close()
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    def group(self, *names: str) -> dict[str, int]:
        """Process groups to watch: the API, Redis and the named workers."""
        g = {"api": self.api.pgid if self.api else 0, "redis": self.redis.pid or 0}
        g.update({n: self.workers[n].pgid for n in names})
        return {k: v for k, v in g.items() if v}

    def close(self) -> None:
        self.sup.stop_all(timeout=20)
        self.redis.stop()


def run_load(mode: str, url: str, out: Path, *, models: list[str], bodies: Path,
             groups: dict[str, int], clients: int, rows: int, warmup: float,
             duration: float, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One ``bench.load`` phase (client k sends to ``models[k % len(models)]``)."""
    cmd = [sys.executable, "-m", "bench.load", mode, "--url", url, "--out", str(out),
           "--model", ",".join(models), "--bodies", str(bodies), "--clients", str(clients),
           "--rows", str(rows), "--warmup", str(warmup), "--duration", str(duration)]
    for k, v in (headers or {}).items():
        cmd += ["--header", f"{k}: {v}"]
    for name, pgid in groups.items():
        cmd += ["--watch", f"{name}={pgid}"]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=warmup + duration + 300)
    return orjson.loads(out.read_bytes())  # type: ignore[no-any-return]


def cpu_split(result: dict[str, Any], workers: set[str]) -> dict[str, float]:
    """CPU ms per completed job of each watched group, the workers also split into the group
    leader (the Celery consumer) and the other processes (its pool); ``total`` is the
    service's (every group but ``client``, the load generator)."""
    done = max(1, result["completed"])
    out: dict[str, float] = {}
    for name, u in result.get("cpu_s", {}).items():
        out[name] = u["total"] * 1000 / done
        if name in workers:
            out[f"{name}.consumer"] = u["leader"] * 1000 / done
            out[f"{name}.pool"] = u["others"] * 1000 / done
    out["total"] = sum(v for k, v in out.items() if "." not in k and k != "client")
    return out
