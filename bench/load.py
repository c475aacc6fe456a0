"""The load generator of ``bench.run``: its own process, asyncio + httpx (uvloop if present).

Modes (one per invocation; the result is one JSON object written to ``--out``):

- ``jobs``: ``--clients`` loops of ``POST /v1/models/M/jobs`` then ``GET /v1/jobs/{id}?wait=30``
  (long-poll), for ``--warmup`` + ``--duration`` seconds; counts the jobs that *completed* in
  the measured window (after the warm-up). ``--model a,b``: client k uses model k mod 2.
- ``enqueue``: the same loops, ``POST`` only (no worker needs to run).
- ``predict``: loops of ``POST /v1/models/M/predict?wait=30``.
- ``fill``: exactly ``--count`` ``POST``s (a backlog for a drain measurement).
- ``seq``: one client, sequential ``POST /predict`` with ``--rows-list`` rows (idle latency).

``--service bento`` sends ``predict`` / ``seq`` traffic to a BentoML peer's ``POST /predict``
instead (``bench.peers``). ``--bodies FILE`` replaces the generated iris bodies with the
file's ``bodies``, and every reply is then checked against the file's ``expected`` outputs
(labels equal, probabilities within 1e-9): a reply that differs is an error, not a completion.
``--header 'Name: value'`` (repeatable) is sent with every request (e.g. an API key).

With ``--watch name=pgid``, the CPU time of those process groups (and of this process,
``client``) is read from /proc at the start and at the end of the measured window; so is the
whole machine's (``machine_cores_busy``: every process's, other tenants' included).
Every loop is bounded by a count or by ``--max-time``. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from bench import cpu

JSON = {"Content-Type": "application/json"}


def make_bodies(rows: int, n: int = 64) -> list[bytes]:
    if _BODIES is not None:
        return _BODIES[0]
    from predq.demo import iris_sample_rows

    return [orjson.dumps({"inputs": iris_sample_rows(rows, seed=1000 + i)}) for i in range(n)]


#: (bodies, expected outputs per body) from ``--bodies``; None: generated iris bodies.
_BODIES: tuple[list[bytes], list[list[dict[str, Any]]]] | None = None
_CHECK_ATOL = 1e-9


def load_bodies(path: Path) -> None:
    global _BODIES
    doc = orjson.loads(path.read_bytes())
    _BODIES = ([orjson.dumps(b) for b in doc["bodies"]], doc["expected"])
    _EXPECTED.update(zip(*_BODIES, strict=True))


def check_reply(body: bytes, content: bytes) -> str | None:
    """Why a reply's outputs differ from the expected ones for ``body`` (None: they match)."""
    if _BODIES is None:
        return None
    expected = _EXPECTED[body]
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return "reply is not JSON"
    got = doc["outputs"] if isinstance(doc, dict) else doc
    if not isinstance(got, list) or len(got) != len(expected):
        return f"{len(got) if isinstance(got, list) else '?'} outputs for {len(expected)} rows"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g.get("label") != e["label"]:
            return f"row {i}: label {g.get('label')!r}, expected {e['label']!r}"
        gp = g.get("probabilities") or {}
        for k, p in e["probabilities"].items():
            if k not in gp or abs(gp[k] - p) > _CHECK_ATOL:
                return f"row {i}: P({k}) = {gp.get(k)!r}, expected {p!r}"
    return None


_EXPECTED: dict[bytes, list[dict[str, Any]]] = {}
_HEADERS: dict[str, str] = {}


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None, "n": 0}
    v = sorted(values)

    def pct(p: float) -> float:
        return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": statistics.fmean(v),
            "max": v[-1], "n": len(v)}


class Run:
    """Shared state of the client loops of one timed phase."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        self.t_start = self.t0 + args.warmup
        self.t_end = self.t_start + args.duration
        self.hard_end = self.t0 + args.max_time
        self.latencies: list[float] = []
        self.completed = 0
        self.total = 0
        self.requests = 0
        self.stages: dict[str, list[float]] = {}
        self.errors = 0
        self.error_samples: list[str] = []
        self.cpu_before: cpu.Snapshot = {}
        self.cpu_after: cpu.Snapshot = {}
        self.client_before = 0.0
        self.client_after = 0.0
        self.machine_before = (0, 0)
        self.machine_after = (0, 0)

    def done(self, started: float) -> None:
        now = time.perf_counter()
        self.total += 1
        if self.t_start <= now <= self.t_end:
            self.completed += 1
            self.latencies.append((now - started) * 1000)

    def stage(self, wall0: float, wall_posted: float, wall_done: float,
              job: dict[str, Any]) -> None:
        """Where one job's time went, from its record's timestamps (same host clock)."""
        try:
            created, started, finished = (_ts(job[k]) for k in
                                          ("created_at", "started_at", "finished_at"))
        except (KeyError, TypeError, ValueError):
            return
        for name, value in (("post_response", wall_posted - wall0),
                            ("queued", started - created), ("running", finished - started),
                            ("finished_to_client", wall_done - finished)):
            self.stages.setdefault(name, []).append(value * 1000)

    def error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(msg[:300])


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat (every process of the
    machine, ours and anyone else's); (0, 0) where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal
    return sum(fields) - fields[3] - fields[4], sum(fields)


def _client_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _post(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    return await client.post(path, content=body, headers=JSON)


def _predict_path(args: argparse.Namespace, model: str) -> str:
    return "/predict" if args.service == "bento" else f"/v1/models/{model}/predict?wait=30"


def _in_window(run: Run) -> bool:
    return run.t_start <= time.perf_counter() <= run.t_end


async def _job_loop(run: Run, client: httpx.AsyncClient, bodies: list[bytes], k: int,
                    mode: str) -> None:
    models = run.args.model.split(",")
    model = models[k % len(models)]  # --model a,b: the clients alternate between the models
    i = k
    while time.perf_counter() < min(run.t_end, run.hard_end):
        body = bodies[i % len(bodies)]
        i += run.args.clients
        started = time.perf_counter()
        wall0 = time.time()
        try:
            run.requests += _in_window(run)
            if mode == "predict":
                r = await _post(client, _predict_path(run.args, model), body)
                if r.status_code != 200:
                    run.error(f"predict {r.status_code}: {r.text}")
                    await asyncio.sleep(0.05)
                    continue
                wrong = check_reply(body, r.content)
                if wrong:
                    run.error(f"wrong outputs: {wrong}")
                    continue
                run.done(started)
                continue
            r = await _post(client, f"/v1/models/{model}/jobs", body)
            if r.status_code != 202:
                run.error(f"submit {r.status_code}: {r.text}")
                await asyncio.sleep(0.05)
                continue
            if mode == "enqueue":
                run.done(started)
                continue
            wall_posted = time.time()
            job_id = orjson.loads(r.content)["id"]
            for _ in range(10):  # each long-poll holds up to 30 s; bounded anyway
                run.requests += _in_window(run)
                g = await client.get(f"/v1/jobs/{job_id}?wait=30")
                job = orjson.loads(g.content) if g.status_code == 200 else {}
                status = job.get("status")
                if status not in ("queued", "running") or time.perf_counter() > run.hard_end:
                    break
            wrong = check_reply(body, g.content) if status == "succeeded" else None
            if wrong:
                run.error(f"job {job_id}: wrong outputs: {wrong}")
            elif status == "succeeded":
                if run.t_start <= time.perf_counter() <= run.t_end:
                    run.stage(wall0, wall_posted, time.time(), job)
                run.done(started)
            else:
                run.error(f"job {job_id}: GET {g.status_code} status {status}: {g.text[:200]}")
        except httpx.HTTPError as e:
            run.error(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.05)


async def _cpu_probe(run: Run, groups: dict[str, int]) -> None:
    await asyncio.sleep(max(0.0, run.t_start - time.perf_counter()))
    run.cpu_before = cpu.snapshot(groups)
    run.client_before = _client_cpu()
    run.machine_before = _machine_cpu()
    await asyncio.sleep(max(0.0, run.t_end - time.perf_counter()))
    run.machine_after = _machine_cpu()
    run.client_after = _client_cpu()
    run.cpu_after = cpu.resnapshot(run.cpu_before)


def _client(args: argparse.Namespace, n: int = 1) -> httpx.AsyncClient:
    """An httpx client with a pool of ``n`` connections.

    Each simulated client gets its own one-connection AsyncClient: httpcore's pool scans every
    connection (a poll() syscall each) on every request, so one shared 32-connection pool
    costs the load generator ~2 ms of CPU per request instead of ~0.6 ms.
    """
    host = urlsplit(args.url).hostname
    if host != "127.0.0.1":
        raise SystemExit(f"refusing to send traffic to {host!r}: 127.0.0.1 only")
    return httpx.AsyncClient(
        base_url=args.url, trust_env=False, timeout=httpx.Timeout(45.0), headers=_HEADERS,
        limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
    )


async def timed(args: argparse.Namespace, groups: dict[str, int]) -> dict[str, Any]:
    bodies = make_bodies(args.rows)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(_client(args)) for _ in range(args.clients)]
        await asyncio.gather(*(c.get("/healthz") for c in clients))
        run = Run(args)
        probe = asyncio.create_task(_cpu_probe(run, groups))
        loops = [asyncio.create_task(_job_loop(run, clients[k], bodies, k, args.mode))
                 for k in range(args.clients)]
        await asyncio.wait(loops, timeout=max(1.0, run.hard_end - time.perf_counter()))
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if not probe.done():
            probe.cancel()
    leaders = dict(groups)
    usage = cpu.delta(run.cpu_before, run.cpu_after, leaders) if run.cpu_after else {}
    if run.cpu_after:
        c = run.client_after - run.client_before
        usage["client"] = {"total": c, "leader": c, "others": 0.0}
    busy = run.machine_after[0] - run.machine_before[0]
    ticks = run.machine_after[1] - run.machine_before[1]
    # Cores the whole machine kept busy over the window (every process, not only ours).
    machine_cores = busy / ticks * (os.cpu_count() or 1) if ticks > 0 else None
    return {
        "mode": args.mode, "clients": args.clients, "rows": args.rows,
        "window_s": args.duration, "completed": run.completed,
        "rate": run.completed / args.duration, "total": run.total,
        "requests_in_window": run.requests,
        "stages_ms": {k: percentiles(v) for k, v in run.stages.items()},
        "latency_ms": percentiles(run.latencies),
        "latencies_ms": [round(x, 2) for x in run.latencies], "errors": run.errors,
        "error_samples": run.error_samples, "cpu_s": usage,
        "machine_cores_busy": machine_cores,
    }


async def fill(args: argparse.Namespace) -> dict[str, Any]:
    bodies = make_bodies(args.rows)
    left = args.count
    ok = 0
    errors: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(_client(args)) for _ in range(args.clients)]
        t0 = time.perf_counter()
        deadline = t0 + args.max_time

        async def loop(k: int) -> None:
            client = clients[k]
            nonlocal left, ok
            while left > 0 and time.perf_counter() < deadline:
                left -= 1
                r = await _post(client, f"/v1/models/{args.model}/jobs", bodies[left % 64])
                if r.status_code == 202:
                    ok += 1
                elif len(errors) < 5:
                    errors.append(f"{r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(loop(k) for k in range(args.clients)))
        elapsed = time.perf_counter() - t0
    return {"mode": "fill", "count": ok, "elapsed_s": elapsed, "rate": ok / elapsed,
            "errors": args.count - ok, "error_samples": errors}


async def seq(args: argparse.Namespace) -> dict[str, Any]:
    """One client, sequential /predict calls, alternating between ``--model`` values
    (comma-separated) call by call, so that each model sees the same machine state."""
    models = args.model.split(",")
    out: dict[str, Any] = {"mode": "seq", "by_rows": {}}
    async with _client(args) as client:
        deadline = time.perf_counter() + args.max_time
        for rows in args.rows_list:
            bodies = make_bodies(rows, 16)
            if _BODIES is not None and rows != args.rows:
                continue  # --bodies: only its own row count
            lat: dict[str, list[float]] = {m: [] for m in models}
            errors = dict.fromkeys(models, 0)
            for i in range(args.warmup_count + args.count):
                if time.perf_counter() > deadline:
                    break
                for model in models if i % 2 == 0 else models[::-1]:
                    t = time.perf_counter()
                    body = bodies[i % len(bodies)]
                    r = await _post(client, _predict_path(args, model), body)
                    ms = (time.perf_counter() - t) * 1000
                    if r.status_code != 200 or check_reply(body, r.content):
                        errors[model] += 1
                    elif i >= args.warmup_count:
                        lat[model].append(ms)
                    await asyncio.sleep(args.gap_ms / 1000)  # a lone caller: the system idles
            out["by_rows"][str(rows)] = {
                m: {"latency_ms": percentiles(lat[m]), "errors": errors[m]} for m in models}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load")
    p.add_argument("mode", choices=["jobs", "enqueue", "predict", "fill", "seq"])
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default="iris")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rows", type=int, default=10)
    p.add_argument("--rows-list", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10])
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--warmup-count", type=int, default=20)
    p.add_argument("--gap-ms", type=float, default=2.0)
    p.add_argument("--max-time", type=float, default=120.0, help="hard cap of the whole run")
    p.add_argument("--watch", action="append", default=[], help="name=pgid (repeatable)")
    p.add_argument("--service", choices=["predq", "bento"], default="predq")
    p.add_argument("--bodies", type=Path, help="JSON {bodies, expected}: check every reply")
    p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    args = p.parse_args(argv)
    if args.bodies is not None:
        load_bodies(args.bodies)
    for h in args.header:
        name, _, value = h.partition(":")
        _HEADERS[name.strip()] = value.strip()
    groups = {k: int(v) for k, v in (w.split("=", 1) for w in args.watch)}
    if args.mode in ("jobs", "enqueue", "predict"):
        args.max_time = min(args.max_time, args.warmup + args.duration + 40.0)
        coro = timed(args, groups)
    elif args.mode == "fill":
        coro = fill(args)
    else:
        coro = seq(args)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    sys.exit(main())
