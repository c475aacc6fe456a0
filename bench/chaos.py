"""predq's chaos proof: thousands of jobs through real processes while they are killed.

    .venv/bin/python -m bench.chaos                 # 5,000 jobs, 64 clients (about 3-6 min)
    .venv/bin/python -m bench.chaos --jobs 500      # a quick look

It starts its own redis-server with an append-only file (127.0.0.1, free port), registers the
demo model (RandomForest(100) on iris) in a temporary registry, and runs the real API
(``python -m predq api``) and two real workers (``python -m predq worker``, concurrency 1
each) as subprocesses. 64 asyncio httpx clients each submit a job (1-50 rows, an
``Idempotency-Key`` on every POST) and then long-poll it (``GET /v1/jobs/{id}?wait=``) until it
ends, then take the next job. During the run, at fixed fractions of the accepted jobs:

1. a worker is killed with SIGKILL (its whole process group: consumer and pool), and a
   replacement is started;
2. Redis is killed (SIGKILL) and started again on the same port with the same AOF;
3. another worker is killed the same way, and replaced.

Clients retry a POST on 503 and 429 (sleeping ``Retry-After``, capped at 10 s) and on
connection errors; the Idempotency-Key makes a retry return the job it may already have
created. GETs retry through the outage. Each retry is counted.

At the end every accepted job is read once more and the run reports: accepted, succeeded,
failed (reasons grouped), **lost** (accepted, but not terminal when the bounded drain time
ends, or gone: 404), **duplicated** (a job whose outputs or final status changed between two
reads, or an Idempotency-Key that produced two different jobs), latency percentiles (first
POST attempt to the client seeing the job end), retries, and the chaos events with their
timings. Lost and duplicated must both be 0; the exit code is 1 otherwise.

It also asserts (exit code 1 otherwise):

- **every job submitted**: all ``--jobs`` jobs got a 202 before the POST phase ended (a stall
  shows up as jobs never submitted);
- **recovery**: after each chaos event, the rate of jobs ending (seen by the clients) returns
  to at least half its rate in the ``--rate-window-s`` before the event (measured over a
  sliding ``--recover-window-s``) within ``--recover-s`` of the fault, and stays there until
  the next event (or the last submission);
- **predicted at most once**: the job hash's ``predictions`` counter (one HINCRBY per actual
  prediction; written by the claim once the claim lease exists) is 1 for every job; where no
  job has that field the count is reported as unknown, not as 0. Independently of it, the
  workers' batch log lines give the number of job predictions that ran to the end of their
  batch: more of them than jobs that ended by a prediction means a job was predicted twice.

Results: stdout and ``bench/results/chaos.json``. Process logs and the state of any lost job
are kept in the printed run directory when something went wrong (``--keep`` keeps them always).
Traffic goes to 127.0.0.1 only. Every loop is bounded in count and in time: the POST phase ends
after ``--post-s`` seconds, the drain after ``--drain-s`` more, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

if __package__ in (None, ""):  # ``python bench/chaos.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from predq.procs import Child, Supervisor, tail_file, wait_for_url  # noqa: E402
from predq.redis_server import RedisServer, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PREFIX = "chaos"
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
#: The chaos plan: (fraction of the jobs accepted, action).
PLAN = ((0.20, "kill_worker"), (0.45, "restart_redis"), (0.70, "kill_worker"))
#: Cap on one Retry-After sleep, so that one answer cannot eat the whole time budget.
MAX_RETRY_SLEEP_S = 10.0


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    """Redis, the API and the workers of one run, and what was done to them."""

    tmp: Path
    redis: RedisServer
    sup: Supervisor
    env: dict[str, str]
    concurrency: int
    url: str = ""
    workers: list[Child] = field(default_factory=list)
    n_started: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def start_api(self) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "predq", "api", "--host", "127.0.0.1", "--port", str(port)]
        child = self.sup.start("api", argv, env=self.env, cwd=self.tmp,
                               log_path=self.tmp / "logs" / "api.log")
        self.url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{self.url}/healthz", timeout=60, children=[child])

    def start_worker(self) -> Child:
        self.n_started += 1
        name = f"chaos-w{self.n_started}@{platform.node() or 'localhost'}"
        argv = [sys.executable, "-m", "predq", "worker", "--concurrency", str(self.concurrency),
                "--hostname", name, "--loglevel", "INFO"]
        log_path = self.tmp / "logs" / f"worker-{self.n_started}.log"
        child = self.sup.start(f"worker-{self.n_started}", argv, env=self.env, cwd=self.tmp,
                               log_path=log_path)
        deadline = time.monotonic() + 90
        for _ in range(2000):
            child.check()
            if f"{name} ready." in tail_file(log_path, 400):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {name} not ready in 90 s:\n{child.tail(30)}")
            time.sleep(0.05)
        self.workers.append(child)
        return child

    def event(self, kind: str, started: float, **info: Any) -> None:
        ev = {"event": kind, "at_s": round(started - self.t0, 2),
              "took_s": round(time.monotonic() - started, 2), **info}
        self.events.append(ev)
        log(f"chaos: {ev}")

    # -- the chaos actions (blocking; run in a thread) ------------------------------------

    def kill_worker(self) -> None:
        started = time.monotonic()
        victim = next(w for w in self.workers if w.alive())
        victim.kill()  # SIGKILL to the whole group: the consumer and its pool at once
        self.workers.remove(victim)
        replacement = self.start_worker()
        self.event("kill_worker", started, killed=victim.name, pid=victim.pid,
                   replacement=replacement.name)

    def restart_redis(self) -> None:
        started = time.monotonic()
        self.redis.restart(kill=True)  # SIGKILL, then the same port and the same AOF
        self.event("restart_redis", started, port=self.redis.port,
                   note="SIGKILL + restart; the AOF fsyncs every second")


# -- the load -------------------------------------------------------------------------------


@dataclass
class Rec:
    """What the client saw of one job."""

    idx: int
    key: str
    n_rows: int
    t_first: float = 0.0
    ids: set[str] = field(default_factory=set)
    accepted: bool = False
    post_error: str | None = None
    status: str | None = None
    error_type: str | None = None
    error_msg: str | None = None
    fingerprint: bytes | None = None
    changed: list[str] = field(default_factory=list)
    t_done: float | None = None
    gone: bool = False

    @property
    def job_id(self) -> str | None:
        return next(iter(self.ids)) if self.ids else None


@dataclass
class Load:
    args: argparse.Namespace
    stack: Stack
    http: httpx.AsyncClient
    post_deadline: float
    drain_deadline: float
    recs: list[Rec] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    _next: Any = None

    def __post_init__(self) -> None:
        rng = random.Random(self.args.seed)
        run = hashlib.sha256(f"{time.time()}".encode()).hexdigest()[:8]
        self.recs = [Rec(i, f"chaos-{run}-{i}", rng.randint(1, 50)) for i in range(self.args.jobs)]
        self._next = iter(self.recs)

    async def client(self) -> None:
        for rec in self._next:  # shared iterator: each job is taken by one client
            if time.monotonic() > self.post_deadline:
                rec.post_error = "not submitted: the POST phase ended"
                continue
            await self.submit(rec)
            if rec.accepted:
                await self.follow(rec)

    async def submit(self, rec: Rec) -> None:
        from predq.demo import iris_sample_rows

        body = orjson.dumps({"inputs": iris_sample_rows(rec.n_rows, seed=rec.idx)})
        headers = {"Content-Type": "application/json", "Idempotency-Key": rec.key}
        rec.t_first = time.monotonic()
        for attempt in range(1000):
            if time.monotonic() > self.post_deadline:
                rec.post_error = f"gave up after {attempt} attempts (POST phase ended)"
                return
            try:
                r = await self.http.post("/v1/models/iris/jobs", content=body, headers=headers,
                                         timeout=10.0)
            except httpx.TransportError as e:
                self.retries[f"post_{type(e).__name__}"] += 1
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
                continue
            if r.status_code == 202:
                job_id = r.json()["id"]
                rec.ids.add(job_id)  # a second, different id for one key is a duplicate
                if not rec.accepted:
                    rec.accepted = True
                    self.accepted += 1
                return
            if r.status_code in (429, 503):
                self.retries[f"post_{r.status_code}"] += 1
                try:
                    wait = float(r.headers.get("retry-after", "1"))
                except ValueError:
                    wait = 1.0
                await asyncio.sleep(min(MAX_RETRY_SLEEP_S, max(0.1, wait)))
                continue
            self.unexpected[f"POST {r.status_code}"] += 1
            rec.post_error = f"POST answered {r.status_code}: {r.text[:300]}"
            return
        rec.post_error = "gave up after 1000 attempts"

    async def read(self, rec: Rec, wait: float) -> dict[str, Any] | None:
        """One GET (long-poll ``wait`` s); the job, or None to retry. Marks 404 as gone."""
        job_id = rec.job_id
        try:
            r = await self.http.get(f"/v1/jobs/{job_id}",
                                    params={"wait": wait} if wait > 0 else None,
                                    timeout=wait + 10.0)
        except httpx.TransportError as e:
            self.retries[f"get_{type(e).__name__}"] += 1
            await asyncio.sleep(0.5)
            return None
        if r.status_code == 200:
            job: dict[str, Any] = r.json()
            self.observe(rec, job)
            return job
        if r.status_code == 503:
            self.retries["get_503"] += 1
            await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", "1") or 1)))
            return None
        if r.status_code == 404:
            rec.gone = True
            return None
        self.unexpected[f"GET {r.status_code}"] += 1
        await asyncio.sleep(0.5)
        return None

    def observe(self, rec: Rec, job: dict[str, Any]) -> None:
        status = job["status"]
        if status not in TERMINAL:
            if rec.status in TERMINAL:
                rec.changed.append(f"{rec.status} -> {status}")
            return
        outputs = job.get("outputs")
        fp = hashlib.sha256(orjson.dumps([status, outputs, job.get("error")])).digest()
        if rec.fingerprint is not None and fp != rec.fingerprint:
            rec.changed.append(f"{rec.status} -> {status} (result changed between reads)")
        if rec.fingerprint is None:
            rec.t_done = time.monotonic()
        rec.fingerprint = fp
        rec.status = status
        if job.get("error"):
            rec.error_type = job["error"].get("type")
            rec.error_msg = job["error"].get("message")
        if status == "succeeded" and (outputs is None or len(outputs) != rec.n_rows):
            rec.changed.append(f"succeeded with {len(outputs or [])} rows for {rec.n_rows}")

    async def follow(self, rec: Rec) -> None:
        gone_reads = 0
        for _ in range(10_000):
            left = self.drain_deadline - time.monotonic()
            if left <= 0:
                return
            job = await self.read(rec, min(20.0, max(0.5, left - 1)))
            if job is not None and job["status"] in TERMINAL:
                return
            if rec.gone:
                gone_reads += 1
                if gone_reads >= 3:  # not a blip: the job is gone
                    return
                rec.gone = False
                await asyncio.sleep(1.0)

    async def verify(self) -> None:
        """Read every accepted job once more: its result must not have changed."""
        sem = asyncio.Semaphore(self.args.clients)

        async def one(rec: Rec) -> None:
            async with sem:
                for _ in range(5):
                    if await self.read(rec, 0) is not None or rec.gone:
                        return

        await asyncio.gather(*(one(r) for r in self.recs if r.accepted))


async def chaos_controller(load: Load) -> None:
    total = load.args.jobs
    for frac, action in PLAN:
        for _ in range(100_000):
            if load.accepted >= frac * total or time.monotonic() > load.post_deadline:
                break
            await asyncio.sleep(0.2)
        if time.monotonic() > load.post_deadline:
            log(f"chaos: {action} skipped (the POST phase ended)")
            continue
        await asyncio.to_thread(getattr(load.stack, action))


async def run_load(args: argparse.Namespace, stack: Stack) -> Load:
    limits = httpx.Limits(max_connections=2 * args.clients,
                          max_keepalive_connections=2 * args.clients)
    async with httpx.AsyncClient(base_url=stack.url, limits=limits, trust_env=False) as http:
        now = time.monotonic()
        load = Load(args, stack, http, post_deadline=now + args.post_s,
                    drain_deadline=now + args.post_s + args.drain_s)
        chaos = asyncio.create_task(chaos_controller(load))
        progress = asyncio.create_task(report_progress(load))
        await asyncio.gather(*(load.client() for _ in range(args.clients)))
        await chaos
        progress.cancel()
        log("all clients done; re-reading every accepted job")
        await load.verify()
        return load


async def report_progress(load: Load) -> None:
    for _ in range(100_000):
        await asyncio.sleep(10)
        done = sum(1 for r in load.recs if r.status in TERMINAL)
        log(f"accepted {load.accepted}, terminal {done}, retries {sum(load.retries.values())}")


# -- the report -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def lost_details(stack: Stack, recs: list[Rec]) -> list[dict[str, Any]]:
    """The stored state of lost jobs (job hash without inputs), for the diagnosis."""
    if not recs or not stack.redis.running:
        return []
    client = stack.redis.client(socket_timeout=5)
    try:
        out = []
        for rec in recs[:50]:
            raw = client.hgetall(f"{PREFIX}:job:{rec.job_id}")
            fields = {k.decode(): v.decode(errors="replace") for k, v in raw.items()
                      if k not in (b"inputs", b"outputs")}
            out.append({"id": rec.job_id, "client_status": rec.status, "gone": rec.gone,
                        "redis": fields or "no job hash"})
        return out
    finally:
        client.close()


def recovery(args: argparse.Namespace, load: Load) -> list[dict[str, Any]]:
    """Per chaos event: the completion rate before it, and how long it took to come back.

    ``before``: jobs that ended (as the clients saw it) per second in the ``rate_window_s``
    before the event started, never reaching back past the end of the previous event (when
    less than 2 s are left, the previous event's ``before`` is kept: the baseline of a chain
    of faults). ``recovered_after_s``: from the moment of the fault (the event's start; a
    replacement worker's start-up counts), the first moment from which the next
    ``recover_window_s`` end jobs at >= half that rate; it must be <= ``recover_s``.
    ``then_jobs_per_s``: the rate from that moment to the next event (or to the last
    submission); it must stay >= half the ``before`` rate too.
    """
    import bisect

    t0 = load.stack.t0
    done = sorted(r.t_done - t0 for r in load.recs if r.t_done is not None)
    # while clients still submit: after the last submission the rate falls off by design
    loaded_end = max((r.t_first - t0 for r in load.recs if r.accepted), default=0.0)

    def count(a: float, b: float) -> int:
        return bisect.bisect_left(done, b) - bisect.bisect_left(done, a)

    out: list[dict[str, Any]] = []
    prev_end, before = 0.0, None
    win = args.recover_window_s
    events = load.stack.events
    for i, ev in enumerate(events):
        start = ev["at_s"]
        a = max(prev_end, start - args.rate_window_s)
        if start - a >= 2.0:
            before = count(a, start) / (start - a)
        recovered: float | None = None
        if before:
            t = start
            while t <= start + args.recover_s and t + win <= loaded_end:
                if count(t, t + win) / win >= before / 2:
                    recovered = round(t - start, 1)
                    break
                t += 0.5
        # ... and it holds: from then until the next event (or the last submission), the rate
        # stays at half or more (a worker that stalls a little later fails here)
        sustained: float | None = None
        if recovered is not None:
            a = start + recovered
            b = min(events[i + 1]["at_s"] if i + 1 < len(events) else loaded_end, loaded_end)
            if b - a >= win:
                sustained = count(a, b) / (b - a)
        out.append({"event": ev["event"], "at_s": start, "took_s": ev["took_s"],
                    "before_jobs_per_s": round(before, 1) if before else None,
                    "recovered_after_s": recovered,
                    "then_jobs_per_s": round(sustained, 1) if sustained is not None else None,
                    "ok": before is not None and recovered is not None
                    and (sustained is None or sustained >= before / 2)})
        prev_end = start + ev["took_s"]
    return out


def predictions(stack: Stack, recs: list[Rec]) -> dict[str, Any]:
    """How many times each job was predicted, by two independent counts (see the module
    docstring): the job hash's ``predictions`` field, and the workers' batch log lines."""
    import re

    out: dict[str, Any] = {"field": "unknown", "more_than_once": None, "examples": []}
    ids = [r.job_id for r in recs if r.accepted and r.job_id]
    if ids and stack.redis.running:
        client = stack.redis.client(socket_timeout=10)
        try:
            values: list[Any] = []
            for i in range(0, len(ids), 500):
                with client.pipeline(transaction=False) as pipe:
                    for job_id in ids[i:i + 500]:
                        pipe.hget(f"{PREFIX}:job:{job_id}", "predictions")
                    values += pipe.execute()
        finally:
            client.close()
        known = {j: int(v) for j, v in zip(ids, values, strict=True) if v is not None}
        if known:
            many = {j: n for j, n in known.items() if n > 1}
            out.update(field=f"present on {len(known)} of {len(ids)} jobs",
                       more_than_once=len(many), examples=sorted(many.items())[:20])
        else:
            out["field"] = "absent on every job (needs the claim lease): predicted-twice count " \
                           "unknown from the job store"
    # Batch log lines: 'batch <id>: <n> jobs, ...' is written once a batch has finished its
    # jobs (n = jobs actually predicted; a batch cut short by a kill or an outage logs none).
    logged = 0
    pattern = re.compile(r"predq\.worker\.batch: batch \w+: (\d+) jobs")
    for path in sorted((stack.tmp / "logs").glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            m = pattern.search(line)
            if m:
                logged += int(m.group(1))
    ended_by_prediction = sum(1 for r in recs if r.accepted and (
        r.status == "succeeded" or (r.status == "failed" and r.error_type != "PoisonJob")))
    out["logged_predictions"] = logged
    out["jobs_ended_by_a_prediction"] = ended_by_prediction
    out["extra_predictions_in_logs"] = logged - ended_by_prediction
    return out


def summarize(args: argparse.Namespace, load: Load, wall_s: float) -> dict[str, Any]:
    recs = load.recs
    accepted = [r for r in recs if r.accepted]
    by_status = Counter(r.status or "not terminal" for r in accepted)
    lost = [r for r in accepted if r.status not in TERMINAL]
    changed = [r for r in accepted if r.changed]
    two_jobs = [r for r in recs if len(r.ids) > 1]
    failed = Counter(f"{r.error_type}: {(r.error_msg or '')[:120]}" for r in accepted
                     if r.status in ("failed", "expired", "cancelled"))
    lat = [(r.t_done - r.t_first) * 1000 for r in accepted if r.t_done is not None]
    done_times = [r.t_done for r in accepted if r.t_done is not None]
    # throughput up to the last job that ended (not counting the drain wait for lost jobs)
    active_s = (max(done_times) - load.stack.t0) if done_times else 0.0
    not_submitted = Counter(r.post_error.split(":")[0] for r in recs if r.post_error)
    out: dict[str, Any] = {
        "command": "python -m bench.chaos " + " ".join(sys.argv[1:]),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"jobs": args.jobs, "clients": args.clients, "workers": args.workers,
                   "concurrency": args.concurrency, "rows_per_job": "1-50",
                   "post_s": args.post_s, "drain_s": args.drain_s, "seed": args.seed,
                   "env": {k: v for k, v in load.stack.env.items()
                           if k.startswith("PREDQ_") and k not in (
                               "PREDQ_REDIS_URL", "PREDQ_REGISTRY_ROOT")},
                   "cpus": os.cpu_count(), "machine": platform.machine()},
        "events": load.stack.events,
        "submitted": len(recs) - sum(not_submitted.values()),
        "accepted": len(accepted),
        "succeeded": by_status.get("succeeded", 0),
        "failed": by_status.get("failed", 0),
        "expired": by_status.get("expired", 0),
        "cancelled": by_status.get("cancelled", 0),
        "failed_reasons": dict(failed.most_common()),
        "lost": len(lost),
        "lost_jobs": lost_details(load.stack, lost),
        "duplicated": len(changed) + len(two_jobs),
        "duplicated_detail": {
            "results_changed_between_reads": [
                {"id": r.job_id, "changes": r.changed} for r in changed[:20]],
            "idempotency_keys_with_two_jobs": [
                {"key": r.key, "ids": sorted(r.ids)} for r in two_jobs[:20]],
        },
        "not_accepted": dict(not_submitted),
        "unexpected_answers": dict(load.unexpected),
        "retries": dict(sorted(load.retries.items())),
        "latency_ms": {"p50": round(percentile(lat, 50), 1), "p90": round(percentile(lat, 90), 1),
                       "p99": round(percentile(lat, 99), 1),
                       "max": round(max(lat), 1) if lat else None},
        "wall_s": round(wall_s, 1),
        "last_job_ended_at_s": round(active_s, 1),
        "jobs_per_s": round(len(lat) / active_s, 1) if active_s else None,
        "recovery": recovery(args, load),
        "predictions": predictions(load.stack, accepted),
    }
    problems = []
    if out["lost"]:
        problems.append(f"{out['lost']} lost")
    if out["duplicated"]:
        problems.append(f"{out['duplicated']} duplicated")
    if out["unexpected_answers"]:
        problems.append(f"unexpected answers {out['unexpected_answers']}")
    if out["submitted"] < args.jobs or out["accepted"] < args.jobs:
        problems.append(f"only {out['accepted']} of {args.jobs} jobs submitted and accepted")
    problems += [f"no recovery within {args.recover_s:g} s after {r['event']} at {r['at_s']} s"
                 for r in out["recovery"] if not r["ok"]]
    preds = out["predictions"]
    if preds["more_than_once"]:
        problems.append(f"{preds['more_than_once']} jobs predicted more than once")
    if preds["extra_predictions_in_logs"] > 0:
        problems.append(f"{preds['extra_predictions_in_logs']} extra predictions in the logs")
    out["problems"] = problems
    out["ok"] = not problems
    return out


def _or_unknown(v: Any) -> Any:
    return "unknown" if v is None else v


def print_summary(s: dict[str, Any]) -> None:
    lines = [
        "",
        f"predq chaos run: {s['config']['jobs']} jobs, {s['config']['clients']} clients, "
        f"{s['config']['workers']} workers x {s['config']['concurrency']}, "
        f"{s['wall_s']} s (last job ended at {s['last_job_ended_at_s']} s: "
        f"{s['jobs_per_s']} jobs/s)",
        "chaos events:",
        *[f"  t={e['at_s']:>6} s  {e['event']:<14} ({e['took_s']} s) "
          f"{ {k: v for k, v in e.items() if k not in ('event', 'at_s', 'took_s')} }"
          for e in s["events"]],
        f"accepted            {s['accepted']}",
        f"succeeded           {s['succeeded']}",
        f"failed              {s['failed']}"
        + (f"  {s['failed_reasons']}" if s["failed_reasons"] else ""),
        f"expired/cancelled   {s['expired']}/{s['cancelled']}",
        f"lost                {s['lost']}",
        f"duplicated          {s['duplicated']}",
        f"not accepted        {s['not_accepted'] or 0}",
        f"unexpected answers  {s['unexpected_answers'] or 0}",
        f"retries             {s['retries']}",
        f"latency ms          p50 {s['latency_ms']['p50']}  p90 {s['latency_ms']['p90']}  "
        f"p99 {s['latency_ms']['p99']}  max {s['latency_ms']['max']}",
        f"submitted           {s['submitted']} of {s['config']['jobs']}",
        "recovery (jobs/s ending before the fault; seconds from the fault until >= half):",
        *[f"  {r['event']:<14} at {r['at_s']:>6} s: before {r['before_jobs_per_s']}/s, "
          f"back to >= half after {r['recovered_after_s']} s, then {r['then_jobs_per_s']}/s"
          f"{'' if r['ok'] else '  NOT RECOVERED'}"
          for r in s["recovery"]],
        f"predicted >1 time   {_or_unknown(s['predictions']['more_than_once'])} "
        f"(job field 'predictions': {s['predictions']['field']})",
        f"batch log lines     {s['predictions']['logged_predictions']} job predictions for "
        f"{s['predictions']['jobs_ended_by_a_prediction']} jobs ended by a prediction "
        f"(extra: {s['predictions']['extra_predictions_in_logs']})",
        f"verdict             {'PASS' if s['ok'] else 'FAIL: ' + '; '.join(s['problems'])}",
        "",
    ]
    print("\n".join(lines), flush=True)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=1, help="pool processes per worker")
    p.add_argument("--post-s", type=float, default=170.0, help="length of the POST phase")
    p.add_argument("--drain-s", type=float, default=150.0,
                   help="after the POST phase, how long accepted jobs may take to end")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--recover-s", type=float, default=45.0,
                   help="after each chaos event, the rate must be back within this long")
    p.add_argument("--rate-window-s", type=float, default=15.0,
                   help="the rate before an event is measured over this many seconds")
    p.add_argument("--recover-window-s", type=float, default=5.0,
                   help="sliding window of the rate after an event")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    p.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    return p.parse_args(argv)


def stack_env(tmp: Path, redis: RedisServer) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    pythonpath = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)
    return {
        **base, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
        "PREDQ_REDIS_URL": redis.url,
        "PREDQ_REGISTRY_ROOT": str(tmp / "registry"),
        "PREDQ_KEY_PREFIX": PREFIX,
        "PREDQ_DEFAULT_QUEUE": "chaos",
        "PREDQ_WEBHOOK_QUEUE": "chaos.webhooks",
        "PREDQ_AUTH_ENABLED": "false",
        "PREDQ_RATE_LIMIT": "1000000/minute",
        # recovery knobs, set low so that a killed worker's jobs come back within the run
        "PREDQ_VISIBILITY_TIMEOUT_S": "10",
        "PREDQ_REAPER_INTERVAL_S": "2",
        "PREDQ_STUCK_AFTER_S": "30",
        # the batch hard time limit (2 x 3 + 3 s) stays below the visibility timeout
        "PREDQ_JOB_TIME_LIMIT_S": "3",
        "PREDQ_MAX_DELIVERIES": "5",
        "PREDQ_WORKER_HEARTBEAT_S": "1",
        "PREDQ_LOG_LEVEL": "INFO",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from predq.demo import ensure_demo
    from predq.shared.registry.store import Registry

    tmp = Path(tempfile.mkdtemp(prefix="predq-chaos-"))
    (tmp / "logs").mkdir()
    log(f"run directory {tmp}")
    ensure_demo(Registry(tmp / "registry"))
    ok = False
    summary: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        with RedisServer(dir=tmp / "redis", appendonly=True) as redis, Supervisor() as sup:
            stack = Stack(tmp, redis, sup, stack_env(tmp, redis), args.concurrency)
            for _ in range(args.workers):
                stack.start_worker()
            stack.start_api()
            log(f"stack ready: redis :{redis.port}, api {stack.url}, "
                f"{len(stack.workers)} workers; {args.jobs} jobs, {args.clients} clients")
            stack.t0 = time.monotonic()
            load = asyncio.run(run_load(args, stack))
            run_s = time.monotonic() - stack.t0
            sup.stop_all(sig=signal.SIGTERM, timeout=15)  # (flushes the workers' logs)
            summary = summarize(args, load, run_s)
    finally:
        wall = time.monotonic() - t_start
        if summary:
            summary["total_s_including_setup"] = round(wall, 1)
            print_summary(summary)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=2) + "\n")
            log(f"wrote {args.out}")
            ok = summary["ok"]
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept the run directory with the process logs: {tmp}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
