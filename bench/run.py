"""predq's benchmark: one command, every figure of the performance targets side by side.

    .venv/bin/python -m bench.run            # full run (about 6 minutes)
    .venv/bin/python -m bench.run --quick    # short run (about 1.5 minutes)
    python bench/run.py --quick              # the same

It starts its own redis-server (127.0.0.1, free port), registers the demo model
(RandomForest(100) on iris) twice in a temporary registry -- ``iris`` on queue ``predq`` and
``irisoff`` on queue ``predq.off`` (PREDQ_MODEL_QUEUES) -- and starts, as subprocesses:

- the real API (``python -m predq api``), for the measured traffic;
- a second, identical API whose only difference is its routing: it puts ``iris`` and
  ``irisoff`` jobs on ``hold.predq`` / ``hold.predq.off``, lists no worker consumes. It serves
  the enqueue-only phase (POST /jobs with no worker consuming) and fills drain backlogs;
- two real workers (``python -m predq worker``): "on" with the default settings (batching)
  consuming ``predq``; "off" with ``PREDQ_MAX_BATCH_JOBS=1`` consuming ``predq.off``.

Everything stays up for the whole run, so the phases being compared alternate round by round
(the machine is shared and drifts by tens of percent within a minute; each on/off pair is
measured seconds apart). Load comes from a separate process (``bench.load``: asyncio +
httpx, 32 clients each doing ``POST /jobs`` then ``GET /jobs/{id}?wait=30``).

Phases:

1. ``enqueue`` / ``e2e on`` / ``e2e off``, in rotating order, N rounds: the enqueue-only rate
   (second API), then 32 clients submit + long-poll against the batching and the
   non-batching worker.
2. ``predict on`` / ``predict off``: 32 clients on POST /predict (full mode only).
3. ``drain on`` / ``drain off``, alternating: a backlog is POSTed to the hold list, then
   RENAMEd onto the warm worker's queue in one step; jobs/s between 10% and 90% done.
4. ``idle``: one client, sequential POST /predict, 1 and 10 rows, alternating on/off call by
   call.
5. ``large``: one 100,000-row job end to end (POST + GET ?wait, outputs downloaded), each
   repetition followed by the local reference on the same body: the API's own
   ``ModelSchema(manifest).parse(body, allow_webhook=True)`` (also shown:
   ``TypeAdapter(list[Row]).validate_json``) + one ``predict_proba`` of the 100k rows.

Throughput is jobs *completed* per second inside the measured window (after a warm-up).
CPU per job is read from /proc for each process group over the same window (the worker
split into the Celery consumer and its pool processes; both workers and both APIs are
summed, the idle ones cost ~0). ``client`` is the load generator's own CPU. Settings that
differ from the defaults: PREDQ_AUTH_ENABLED=false, PREDQ_RATE_LIMIT=1000000/second (all
clients share 127.0.0.1; the check still runs), PREDQ_QUEUE_MAX_ROWS=10^9 (the hold lists
are never drained). Nothing here asserts a time; compare ratios. Results: stdout (markdown)
and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

if __package__ in (None, ""):  # ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu  # noqa: E402
from bench.load import percentiles  # noqa: E402
from predq.procs import Child, Supervisor, wait_for_url  # noqa: E402
from predq.push import push_model
from predq.redis_server import RedisServer, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PREFIX = "bench"
MODEL = {True: "iris", False: "irisoff"}
QUEUE = {True: "predq", False: "predq.off"}
HOLD = {True: "hold.predq", False: "hold.predq.off"}
ONOFF = {True: "on", False: "off"}

TARGETS = {
    "batching_gain_e2e": (">=", 5.0),
    "batching_gain_drain": (">=", 5.0),
    "e2e_over_enqueue": (">=", 0.5),
    "idle_p50_delta_ms_1row": ("<=", 2.0),
    "idle_p50_delta_ms_10row": ("<=", 2.0),
    "large_job_ratio": ("<=", 2.0),
}


@dataclass
class Profile:
    """Durations and sizes of one run mode."""

    warmup: float  # seconds before each measured window
    duration: float  # seconds of each measured window
    rounds: int  # rounds of enqueue / e2e on / e2e off (and predict on / off)
    drain_rounds: int
    backlog_on: int  # jobs per drain round, batching on
    backlog_off: int  # jobs per drain round, batching off
    drain_timeout: float
    seq_count: int  # sequential calls per (model, rows) in the idle phase
    large_reps: int
    predict_phase: bool


FULL = Profile(warmup=3.0, duration=12.0, rounds=3, drain_rounds=2, backlog_on=8000,
               backlog_off=2000, drain_timeout=60.0, seq_count=200, large_reps=3,
               predict_phase=True)
QUICK = Profile(warmup=2.0, duration=6.0, rounds=1, drain_rounds=1, backlog_on=3000,
                backlog_off=800, drain_timeout=40.0, seq_count=60, large_reps=1,
                predict_phase=False)


@dataclass
class Bench:
    args: argparse.Namespace
    prof: Profile
    tmp: Path
    redis: RedisServer
    sup: Supervisor
    env: dict[str, str]
    url: str = ""
    fill_url: str = ""
    api: Child | None = None
    api_fill: Child | None = None
    workers: dict[bool, Child] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- processes ----------------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def _start_api(self, name: str, env: dict[str, str]) -> tuple[Child, str]:
        port = free_port()
        child = self.sup.start(
            name, [sys.executable, "-m", "predq", "api", "--host", "127.0.0.1",
                   "--port", str(port)],
            env=env, cwd=self.tmp, log_path=self.tmp / "logs" / f"{name}.log")
        url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{url}/healthz", timeout=60, children=[child])
        return child, url

    def start_apis(self) -> None:
        self.api, self.url = self._start_api("api", self.env)
        hold = {MODEL[b]: HOLD[b] for b in (True, False)}
        self.api_fill, self.fill_url = self._start_api(
            "api_fill", {**self.env, "PREDQ_MODEL_QUEUES": json.dumps(hold)})

    def start_worker(self, batching: bool) -> Child:
        env = dict(self.env)
        if not batching:
            env["PREDQ_MAX_BATCH_JOBS"] = "1"
        tag = ONOFF[batching]
        child = self.sup.start(
            f"worker-{tag}",
            [sys.executable, "-m", "predq", "worker", "--hostname", f"bench-{tag}@%h",
             "--queues", QUEUE[batching]],
            env=env, cwd=self.tmp, log_path=self.tmp / "logs" / f"worker-{tag}.log")
        self.workers[batching] = child
        return child

    def wait_workers(self, timeout: float = 90.0) -> None:
        """Until each worker answers a /predict (its consumer runs, its model is loaded)."""
        deadline = time.monotonic() + timeout
        body = orjson.dumps({"inputs": [{"sepal_length": 5.1, "sepal_width": 3.5,
                                         "petal_length": 1.4, "petal_width": 0.2}]})
        with httpx.Client(base_url=self.url, trust_env=False, timeout=10) as h:
            for batching, child in self.workers.items():
                while True:  # bounded by the deadline
                    child.check()
                    r = h.post(f"/v1/models/{MODEL[batching]}/predict?wait=5", content=body,
                               headers={"Content-Type": "application/json"})
                    if r.status_code == 200:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"worker {ONOFF[batching]} not ready: "
                                           f"{r.status_code} {r.text[:300]}\n{child.tail(20)}")

    def groups(self) -> dict[str, int]:
        g = {"api": self.api.pgid if self.api else 0,
             "api_fill": self.api_fill.pgid if self.api_fill else 0,
             "redis": self.redis.pid or 0}
        for batching, child in self.workers.items():
            g[f"worker_{ONOFF[batching]}"] = child.pgid
        return {k: v for k, v in g.items() if v}

    # -- redis-side counters --------------------------------------------------------------

    def rclient(self) -> Any:
        return self.redis.client(socket_timeout=5)

    def batch_counters(self) -> dict[str, int]:
        c = self.rclient()
        try:
            raw = c.hgetall(f"{PREFIX}:stats:batches")
        finally:
            c.close()
        return {k.decode(): int(v) for k, v in raw.items()}

    def stats_http(self) -> dict[str, Any]:
        with httpx.Client(base_url=self.url, trust_env=False, timeout=10) as h:
            r = h.get("/v1/stats/batches")
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

    # -- load generator and profiler --------------------------------------------------------

    def load(self, mode: str, *extra: str, url: str | None = None, timeout: float = 200.0
             ) -> dict[str, Any]:
        out = self.tmp / f"load-{mode}-{time.monotonic_ns()}.json"
        argv = [sys.executable, "-m", "bench.load", mode, "--url", url or self.url,
                "--out", str(out), "--clients", str(self.args.clients),
                "--rows", str(self.args.rows), *extra]
        for name, pgid in self.groups().items():
            argv += ["--watch", f"{name}={pgid}"]
        proc = subprocess.run(argv, env=self.env, cwd=ROOT, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench.load {mode} failed ({proc.returncode}):\n"
                               f"{proc.stdout.decode(errors='replace')[-3000:]}")
        return orjson.loads(out.read_bytes())  # type: ignore[no-any-return]

    def spy(self, name: str, delay: float, duration: float) -> list[subprocess.Popen[bytes]]:
        """With --profile: py-spy record (raw collapsed stacks) of the APIs and workers that
        the phase ``name`` exercises."""
        if not self.args.profile:
            return []
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        words = set(name.split())
        wanted = {"api_fill"} if "enqueue" in words or "fill" in words else {"api"}
        if "on" in words:
            wanted.add("worker_on")
        if "off" in words:
            wanted.add("worker_off")
        if "drain" in words:
            wanted.discard("api")
        procs = []
        for group, pgid in self.groups().items():
            if group not in wanted:
                continue
            n = len(list(self.args.profile.glob(f"{name.replace(' ', '_')}.{group}*.txt")))
            out = self.args.profile / f"{name.replace(' ', '_')}.{group}.{n}.txt"
            idle = "--idle " if self.args.profile_idle else ""
            cmd = (f"sleep {delay:g}; exec {exe} record {idle}--nonblocking --subprocesses "
                   f"-r 100 -d {max(1, int(duration))} -f raw -o {out} -p {pgid}")
            procs.append(subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        return procs

    @staticmethod
    def unspy(procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- phases -----------------------------------------------------------------------------

    def timed_round(self, name: str, mode: str, model: str, url: str | None = None
                    ) -> dict[str, Any]:
        before = self.batch_counters()
        spies = self.spy(name, self.prof.warmup + 0.5, self.prof.duration - 1)
        res = self.load(mode, "--model", model, "--warmup", str(self.prof.warmup),
                        "--duration", str(self.prof.duration), url=url)
        self.unspy(spies)
        after = self.batch_counters()
        res.update(_batch_delta(before, after))
        self.rounds.setdefault(name, []).append(res)
        self.log(f"  {name}: {res['rate']:.0f} jobs/s, p50 {_f(res['latency_ms']['p50'])} ms, "
                 f"{res['mean_jobs_per_batch'] or '-'} jobs/batch, errors {res['errors']} "
                 f"{res['error_samples'][:1]}")
        return res

    def pooled(self, name: str, mode: str, batching: bool | None) -> dict[str, Any]:
        """One row of the table from all rounds of ``name``."""
        rs = self.rounds[name]
        window = sum(r["window_s"] for r in rs)
        completed = sum(r["completed"] for r in rs)
        lat = [x for r in rs for x in r.get("latencies_ms", [])]
        usage: dict[str, dict[str, float]] = {}
        for r in rs:
            for proc, d in r["cpu_s"].items():
                acc = usage.setdefault(proc, {"total": 0.0, "leader": 0.0, "others": 0.0})
                for k in acc:
                    acc[k] += d[k]
        jobs = sum(r["batch_jobs"] for r in rs)
        batches = sum(r["batches"] for r in rs)
        requests = sum(r.get("requests_in_window", 0) for r in rs)
        phase = {"phase": name, "mode": mode, "batching": batching,
                 "jobs_s": completed / window if window else 0.0, "completed": completed,
                 "window_s": window, "rounds": [r["rate"] for r in rs],
                 "latency_ms": percentiles(lat) if lat else None,
                 "errors": sum(r["errors"] for r in rs),
                 "error_samples": [e for r in rs for e in r["error_samples"]][:5],
                 "requests_per_job": requests / completed if completed and requests else None,
                 "cpu_s": usage, "batch_jobs": jobs, "batches": batches,
                 "mean_jobs_per_batch": round(jobs / batches, 1) if batches else None}
        stages: dict[str, list[float]] = {}
        for r in rs:
            for k, v in (r.get("stages_ms") or {}).items():
                if v.get("p50") is not None:
                    stages.setdefault(k, []).append(v["p50"])
        if stages:  # the mean over the rounds of each stage's p50
            phase["stages_p50_ms"] = {k: statistics.fmean(v) for k, v in stages.items()}
        if mode == "drain":
            phase["drains"] = [{k: r[k] for k in ("backlog", "drained", "rate",
                                                  "total_s", "first_done_s")} for r in rs]
        self.phases.append(phase)
        return phase

    def throughput_phase(self) -> None:
        """enqueue / e2e on / e2e off in rotating order, ``rounds`` times."""
        p = self.prof
        self.log(f"phase enqueue + e2e on/off: {p.rounds} round(s) of {p.warmup:g} s "
                 f"warm-up + {p.duration:g} s each")
        runs: list[tuple[str, Callable[[], Any]]] = [
            ("enqueue", lambda: self.timed_round("enqueue", "enqueue", MODEL[True],
                                                 url=self.fill_url)),
            ("e2e on", lambda: self.timed_round("e2e on", "jobs", MODEL[True])),
            ("e2e off", lambda: self.timed_round("e2e off", "jobs", MODEL[False])),
        ]
        for i in range(p.rounds):
            for _, fn in runs[i % 3:] + runs[:i % 3]:
                fn()
        self.pooled("enqueue", "enqueue", None)
        self.pooled("e2e on", "jobs", True)
        self.pooled("e2e off", "jobs", False)

    def alternating(self, label: str, mode: str) -> None:
        """``label on`` and ``label off`` in alternating rounds (on-off, off-on, ...)."""
        self.log(f"phase {label} on/off: {self.prof.rounds} round(s) of "
                 f"{self.prof.warmup:g} s warm-up + {self.prof.duration:g} s each")
        for i in range(self.prof.rounds):
            for batching in (True, False) if i % 2 == 0 else (False, True):
                self.timed_round(f"{label} {ONOFF[batching]}", mode, MODEL[batching])
        for batching in (True, False):
            self.pooled(f"{label} {ONOFF[batching]}", mode, batching)

    def fill(self, batching: bool, count: int) -> None:
        """POST ``count`` jobs through the second API: they wait on the hold list."""
        res = self.load("fill", "--model", MODEL[batching], "--count", str(count),
                        "--max-time", "120", url=self.fill_url)
        self.extra.setdefault("fills", []).append(res)
        if res["count"] < count:
            raise RuntimeError(f"fill: only {res['count']} of {count} jobs accepted: "
                               f"{res['error_samples']}")

    def drain_round(self, batching: bool) -> dict[str, Any]:
        """RENAME the filled hold list onto the (idle, warm) worker's queue, and measure the
        completion rate between 10% and 90% of the backlog (bounded by drain_timeout)."""
        name = f"drain {ONOFF[batching]}"
        c = self.rclient()
        try:
            backlog = int(c.llen(HOLD[batching]))
            if backlog < 100 or c.llen(QUEUE[batching]):
                raise RuntimeError(f"{name}: {backlog} jobs on hold, "
                                   f"{c.llen(QUEUE[batching])} already queued")
            before = self.batch_counters()
            base = before.get("jobs", 0)
            spies = self.spy(name, 0.5, 4)
            t_launch = time.perf_counter()
            c.rename(HOLD[batching], QUEUE[batching])
            lo, hi = max(1, int(backlog * 0.1)), int(backlog * 0.9)
            deadline = t_launch + self.prof.drain_timeout
            first = lo_s = hi_s = None
            lo_n = hi_n = done = 0
            snap_lo: cpu.Snapshot = {}
            snap_hi: cpu.Snapshot = {}
            while time.perf_counter() < deadline:
                done = int(c.hget(f"{PREFIX}:stats:batches", "jobs") or 0) - base
                now = time.perf_counter()
                if first is None and done > 0:
                    first = now
                if lo_s is None and done >= lo:
                    lo_s, lo_n = now, done
                    snap_lo = cpu.snapshot(self.groups())
                if lo_s is not None and hi_s is None and done >= hi:
                    hi_s, hi_n = now, done
                    snap_hi = cpu.resnapshot(snap_lo)
                if done >= backlog:
                    break
                time.sleep(0.02)
            t_end = time.perf_counter()
            self.unspy(spies)
        finally:
            c.close()
        if lo_s is None:
            raise RuntimeError(f"{name}: nothing completed in {self.prof.drain_timeout:g} s:\n"
                               f"{self.workers[batching].tail(30)}")
        if hi_s is None:  # timed out: use what we have
            hi_s, hi_n = t_end, done
            snap_hi = cpu.resnapshot(snap_lo)
        n = hi_n - lo_n
        res = {"rate": n / (hi_s - lo_s) if hi_s > lo_s else 0.0, "completed": n,
               "window_s": hi_s - lo_s, "backlog": backlog, "drained": done,
               "first_done_s": (first or t_end) - t_launch, "total_s": t_end - t_launch,
               "errors": backlog - done, "error_samples": [],
               "cpu_s": cpu.delta(snap_lo, snap_hi, self.groups()),
               **_batch_delta(before, self.batch_counters())}
        self.rounds.setdefault(name, []).append(res)
        self.log(f"  {name}: {res['rate']:.0f} jobs/s over {n} jobs (10%..90% of {backlog}), "
                 f"{res['mean_jobs_per_batch']} jobs/batch, all done in {res['total_s']:.1f} s")
        return res

    def drain_phase(self) -> None:
        p = self.prof
        self.log(f"phase drain on/off: {p.drain_rounds} round(s), backlogs of {p.backlog_on} "
                 f"(on) and {p.backlog_off} (off) jobs")
        c = self.rclient()
        try:  # the enqueue phase's jobs: never to run
            c.delete(HOLD[True], HOLD[False])
        finally:
            c.close()
        for i in range(p.drain_rounds):
            self.fill(True, p.backlog_on)
            self.fill(False, p.backlog_off)
            for batching in (True, False) if i % 2 == 0 else (False, True):
                self.drain_round(batching)
        for batching in (True, False):
            self.pooled(f"drain {ONOFF[batching]}", "drain", batching)

    def idle_phase(self) -> None:
        self.log(f"phase idle: sequential /predict, {self.prof.seq_count} calls per model and "
                 "row count, alternating on/off")
        res = self.load("seq", "--model", f"{MODEL[True]},{MODEL[False]}",
                        "--count", str(self.prof.seq_count), "--warmup-count", "20",
                        "--rows-list", "1,10", "--max-time", "150")
        for rows, by_model in res["by_rows"].items():
            for batching in (True, False):
                r = by_model[MODEL[batching]]
                lat = r["latency_ms"]
                plural = "s" if rows != "1" else ""
                self.phases.append({
                    "phase": f"idle {ONOFF[batching]} ({rows} row{plural})", "mode": "seq",
                    "batching": batching, "rows": int(rows), "jobs_s": None,
                    "completed": lat["n"], "latency_ms": lat, "errors": r["errors"],
                    "error_samples": [], "cpu_s": {}})
                self.log(f"  {ONOFF[batching]}, {rows} row{plural}: p50 {_f(lat['p50'])} ms, "
                         f"p99 {_f(lat['p99'])} ms")

    def large_job(self) -> dict[str, Any]:
        """One 100k-row job end to end, each time next to the local reference."""
        from predq.demo import iris_sample_rows

        n = 100_000
        body = orjson.dumps({"inputs": iris_sample_rows(n, seed=7)})
        ref_once = local_reference(self.env["PREDQ_REGISTRY_ROOT"], MODEL[True], body)
        self.log(f"phase large: one {n}-row job ({len(body) / 1e6:.1f} MB body), "
                 f"{self.prof.large_reps} rep(s), each followed by the local reference")
        runs = []
        with httpx.Client(base_url=self.url, trust_env=False, timeout=120) as h:
            for _ in range(self.prof.large_reps):
                snap = cpu.snapshot(self.groups())
                t0 = time.perf_counter()
                r = h.post(f"/v1/models/{MODEL[True]}/jobs", content=body,
                           headers={"Content-Type": "application/json"})
                t_post = time.perf_counter() - t0
                if r.status_code != 202:
                    raise RuntimeError(f"large job: {r.status_code} {r.text[:500]}")
                job_id = r.json()["id"]
                job: dict[str, Any] = {}
                t_got = t0
                for _ in range(20):  # each GET holds up to 30 s
                    g = h.get(f"/v1/jobs/{job_id}?wait=30")  # reads the whole body
                    t_got = time.perf_counter()
                    job = orjson.loads(g.content) if g.status_code == 200 else {}
                    if job.get("status") not in ("queued", "running"):
                        break
                total = t_got - t0  # the client's parse of the outputs is not counted
                usage = cpu.delta(snap, cpu.resnapshot(snap), self.groups())
                if job.get("status") != "succeeded" or len(job["outputs"]) != n:
                    raise RuntimeError(f"large job ended {job.get('status')}: {g.text[:500]}")
                ref = ref_once()
                run = {
                    "total_s": total, "post_s": t_post, "response_bytes": len(g.content),
                    "queue_wait_s": _ts(job["started_at"]) - _ts(job["created_at"]),
                    "worker_s": _ts(job["finished_at"]) - _ts(job["started_at"]),
                    "cpu_s": usage, "reference": ref,
                    "ratio_schema": total / (ref["schema_parse_s"] + ref["predict_proba_s"]),
                    "ratio_typeadapter": total / (ref["typeadapter_s"] + ref["predict_proba_s"]),
                }
                run["get_after_finish_s"] = (total - t_post - run["queue_wait_s"]
                                             - run["worker_s"])
                runs.append(run)
                self.log(f"  e2e {total:.3f} s (POST {t_post:.3f}, queue "
                         f"{run['queue_wait_s']:.3f}, worker {run['worker_s']:.3f}, GET after "
                         f"finish {run['get_after_finish_s']:.3f}); reference parse "
                         f"{ref['schema_parse_s']:.3f} (TypeAdapter {ref['typeadapter_s']:.3f})"
                         f" + predict_proba {ref['predict_proba_s']:.3f} -> ratio "
                         f"{run['ratio_schema']:.2f}")
        med = sorted(runs, key=lambda x: x["ratio_schema"])[len(runs) // 2]
        out = {"rows": n, "body_bytes": len(body), "runs": runs, "median_run": med,
               "ratio_schema": statistics.median(x["ratio_schema"] for x in runs),
               "ratio_typeadapter": statistics.median(x["ratio_typeadapter"] for x in runs)}
        self.extra["large"] = out
        return out


def local_reference(registry_root: str, model: str, body: bytes
                    ) -> Callable[[], dict[str, float]]:
    """A function timing, once each: ``ModelSchema.parse(body)`` (what the API runs),
    ``TypeAdapter(list[Row]).validate_json`` of the rows, and one ``predict_proba`` of the
    same rows (a DataFrame, as the model was fitted on one). Setup is done here, untimed."""
    import pandas as pd
    from pydantic import TypeAdapter

    from predq.shared.registry.schema import ModelSchema
    from predq.shared.registry.serialization import load_estimator
    from predq.shared.registry.store import Registry
    from predq.shared.settings import Settings

    s = Settings(registry_root=Path(registry_root), _env_file=None)  # type: ignore[call-arg]
    reg = Registry(s.registry_root)
    manifest = reg.resolve(model, None)
    schema = ModelSchema(manifest, max_rows=s.max_rows_per_job, max_string=s.max_string_length,
                         max_metadata_bytes=s.max_metadata_bytes)
    est = load_estimator(reg.artifact_path(manifest), fmt=manifest.format,
                         expected_sha256=manifest.sha256, trusted_types=manifest.trusted_types)
    rows_json = orjson.dumps(orjson.loads(body)["inputs"])
    adapter = TypeAdapter(list[schema.row_type])  # type: ignore[name-defined]
    names = [f.name for f in manifest.features]
    frame = pd.DataFrame(adapter.validate_json(rows_json), columns=names)
    est.predict_proba(frame[:10])

    def once() -> dict[str, float]:
        t = time.perf_counter()
        schema.parse(body, allow_webhook=True)
        t1 = time.perf_counter()
        adapter.validate_json(rows_json)
        t2 = time.perf_counter()
        est.predict_proba(frame)
        t3 = time.perf_counter()
        return {"schema_parse_s": t1 - t, "typeadapter_s": t2 - t1, "predict_proba_s": t3 - t2}

    return once


# -- helpers ------------------------------------------------------------------------------------


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _batch_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    jobs = after.get("jobs", 0) - before.get("jobs", 0)
    batches = after.get("batches", 0) - before.get("batches", 0)
    return {"batch_jobs": jobs, "batches": batches,
            "mean_jobs_per_batch": round(jobs / batches, 1) if batches else None}


def _cpu_ms_per_job(phase: dict[str, Any]) -> dict[str, float]:
    n = phase.get("completed") or 0
    if not n or not phase.get("cpu_s"):
        return {}
    out: dict[str, float] = {}
    for name, d in phase["cpu_s"].items():
        if name.startswith("worker"):
            out["worker"] = out.get("worker", 0.0) + d["total"] * 1000 / n
            out["worker_consumer"] = out.get("worker_consumer", 0.0) + d["leader"] * 1000 / n
            out["worker_pool"] = out.get("worker_pool", 0.0) + d["others"] * 1000 / n
        elif name.startswith("api"):
            out["api"] = out.get("api", 0.0) + d["total"] * 1000 / n
        else:
            out[name] = d["total"] * 1000 / n
    out["total"] = sum(v for k, v in out.items() if k in ("api", "worker", "redis", "client"))
    return out


def compute_ratios(phases: dict[str, dict[str, Any]], rounds: dict[str, list[dict[str, Any]]],
                   large: dict[str, Any] | None) -> dict[str, Any]:
    def rate(name: str) -> float | None:
        p = phases.get(name)
        return p["jobs_s"] if p else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def p50(name: str) -> float | None:
        p = phases.get(name)
        return p["latency_ms"]["p50"] if p and p["latency_ms"]["n"] else None

    def sub(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    def spread(a_name: str, b_name: str) -> list[float]:
        a_rs, b_rs = rounds.get(a_name, []), rounds.get(b_name, [])
        return [a["rate"] / b["rate"] for a, b in zip(a_rs, b_rs, strict=False) if b["rate"]]

    return {
        "batching_gain_e2e": div(rate("e2e on"), rate("e2e off")),
        "batching_gain_drain": div(rate("drain on"), rate("drain off")),
        "batching_gain_predict": div(rate("predict on"), rate("predict off")),
        "e2e_over_enqueue": div(rate("e2e on"), rate("enqueue")),
        "idle_p50_delta_ms_1row": sub(p50("idle on (1 row)"), p50("idle off (1 row)")),
        "idle_p50_delta_ms_10row": sub(p50("idle on (10 rows)"), p50("idle off (10 rows)")),
        "large_job_ratio": large["ratio_schema"] if large else None,
        "large_job_ratio_vs_typeadapter": large["ratio_typeadapter"] if large else None,
        "per_round": {"batching_gain_e2e": spread("e2e on", "e2e off"),
                      "batching_gain_drain": spread("drain on", "drain off"),
                      "batching_gain_predict": spread("predict on", "predict off"),
                      "e2e_over_enqueue": spread("e2e on", "enqueue"),
                      "large_job_ratio": [r["ratio_schema"] for r in large["runs"]]
                      if large else []},
    }


def verdict(key: str, value: float | None) -> str:
    if key not in TARGETS or value is None:
        return ""
    op, target = TARGETS[key]
    ok = value >= target if op == ">=" else value <= target
    return "PASS" if ok else "MISS"


_LABELS = {
    "batching_gain_e2e": "micro-batching gain, end to end (e2e on / e2e off)",
    "batching_gain_drain": "micro-batching gain, backlog drain (drain on / drain off)",
    "batching_gain_predict": "micro-batching gain, 32 clients on POST /predict",
    "e2e_over_enqueue": "end-to-end jobs/s / enqueue-only jobs/s",
    "idle_p50_delta_ms_1row": "idle /predict p50, on − off, 1 row (ms)",
    "idle_p50_delta_ms_10row": "idle /predict p50, on − off, 10 rows (ms)",
    "large_job_ratio": "100k-row job e2e / (ModelSchema.parse + predict_proba)",
    "large_job_ratio_vs_typeadapter":
        "100k-row job e2e / (TypeAdapter(list[Row]).validate_json + predict_proba)",
}


def stages_table(phases: list[dict[str, Any]]) -> list[str]:
    """Where a job's time goes (p50 of each stage, from the job record's timestamps)."""
    lines = ["", "Where an end-to-end job's time goes (p50 ms; queued = created_at → started_at "
             "(claim), running = started_at → finished_at, finished → client = pub/sub wake-up "
             "+ GET + response):", "",
             "| phase | POST answered | queued | running | finished → client |",
             "|---|---:|---:|---:|---:|"]
    for p in phases:
        st = p["stages_p50_ms"]
        lines.append(f"| {p['phase']} | {_f(st.get('post_response'))} | {_f(st.get('queued'))} "
                     f"| {_f(st.get('running'))} | {_f(st.get('finished_to_client'))} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"predq benchmark, {result['when']}: {result['mode']} run, {result['clients']} "
        f"clients, {result['rows']}-row jobs, RandomForest(100) on iris, "
        f"{result['host']['cpus']} CPUs (shared), worker concurrency "
        f"{result['worker_concurrency']}, load average at the end "
        f"{result['host']['loadavg_end'][0]:.1f}",
        "",
        "| phase | jobs/s | p50 ms | p99 ms | jobs/batch | CPU ms/job: API | worker "
        "(consumer + pool) | redis | client | total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["phases"]:
        lat = p.get("latency_ms") or {}
        c = _cpu_ms_per_job(p)
        worker = (f"{c['worker']:.2f} ({c['worker_consumer']:.2f} + {c['worker_pool']:.2f})"
                  if "worker" in c else "-")
        lines.append(
            f"| {p['phase']} | {_f(p['jobs_s'], 0)} | {_f(lat.get('p50'))} | "
            f"{_f(lat.get('p99'))} | {_f(p.get('mean_jobs_per_batch'))} | "
            f"{_f(c.get('api'), 2)} | {worker} | {_f(c.get('redis'), 2)} | "
            f"{_f(c.get('client'), 2)} | {_f(c.get('total'), 2)} |")
    staged = [p for p in result["phases"] if p.get("stages_p50_ms")]
    if staged:
        lines += stages_table(staged)
    r = result["ratios"]
    lines += ["", "| ratio | value | per round | target | verdict |",
              "|---|---:|---|---:|---|"]
    for key, label in _LABELS.items():
        v = r.get(key)
        if v is None and key == "batching_gain_predict":
            continue
        t = TARGETS.get(key)
        target = f"{t[0]} {t[1]:g}" if t else "(info)"
        per = r["per_round"].get(key) or []
        per_s = ", ".join(f"{x:.2f}" for x in per) if len(per) > 1 else ""
        lines.append(f"| {label} | {_f(v, 2)} | {per_s} | {target} | {verdict(key, v)} |")
    large = result.get("large")
    if large:
        m = large["median_run"]
        ref = m["reference"]
        lines += [
            "",
            f"Large job ({large['rows']} rows, {large['body_bytes'] / 1e6:.1f} MB body, "
            f"{m['response_bytes'] / 1e6:.1f} MB response), median run: e2e "
            f"{m['total_s']:.3f} s = POST {m['post_s']:.3f} + queue {m['queue_wait_s']:.3f} "
            f"+ worker {m['worker_s']:.3f} + GET after finish {m['get_after_finish_s']:.3f}; "
            f"reference: ModelSchema.parse {ref['schema_parse_s']:.3f} s "
            f"(TypeAdapter.validate_json {ref['typeadapter_s']:.3f} s) + predict_proba "
            f"{ref['predict_proba_s']:.3f} s. CPU s: " + ", ".join(
                f"{k} {v['total']:.2f}" for k, v in m["cpu_s"].items()) + ".",
        ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    prof = QUICK if args.quick else FULL
    if args.duration:
        prof.duration = args.duration
    if args.rounds:
        prof.rounds = args.rounds
    tmp = Path(tempfile.mkdtemp(prefix="predq-bench-"))
    (tmp / "logs").mkdir()
    registry_root = tmp / "registry"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    pythonpath = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)
    redis = RedisServer(dir=tmp / "redis")
    sup = Supervisor()
    bench: Bench | None = None
    stats: dict[str, Any] = {}
    try:
        redis.start()
        env = {**base, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
               "PREDQ_REDIS_URL": redis.url, "PREDQ_REGISTRY_ROOT": str(registry_root),
               "PREDQ_KEY_PREFIX": PREFIX, "PREDQ_DEFAULT_QUEUE": QUEUE[True],
               "PREDQ_MODEL_QUEUES": json.dumps({MODEL[False]: QUEUE[False]}),
               "PREDQ_AUTH_ENABLED": "false", "PREDQ_LOG_LEVEL": args.log_level,
               # All 32 clients share 127.0.0.1: a limit that never trips, but still counts
               # (the INCR per request stays in the measured path).
               "PREDQ_RATE_LIMIT": "1000000/second",
               # The hold lists of the enqueue phase are never drained.
               "PREDQ_QUEUE_MAX_ROWS": "1000000000"}
        bench = Bench(args, prof, tmp, redis, sup, env)
        bench.log(f"redis {redis.url}; registering the demo model; logs in {tmp / 'logs'}")
        register_models(registry_root)
        bench.start_apis()
        bench.start_worker(True)
        bench.start_worker(False)
        bench.wait_workers()
        bench.log(f"api {bench.url} (enqueue-only api {bench.fill_url}), workers ready")

        bench.throughput_phase()
        if prof.predict_phase:
            bench.alternating("predict", "predict")
        bench.drain_phase()
        bench.idle_phase()
        bench.large_job()
        stats = bench.stats_http()
    except BaseException:
        if bench is not None:
            for c in sup.children:
                print(f"--- {c.name} log tail ---\n{c.tail(30)}", file=sys.stderr)
        raise
    finally:
        sup.stop_all(timeout=20)
        redis.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    by_name = {p["phase"]: p for p in bench.phases}
    ratios = compute_ratios(by_name, bench.rounds, bench.extra.get("large"))
    for p in bench.phases:
        p["cpu_ms_per_job"] = _cpu_ms_per_job(p)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full", "clients": args.clients, "rows": args.rows,
        "profile": asdict(prof),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_end": os.getloadavg()},
        "worker_concurrency": os.cpu_count(), "phases": bench.phases, "ratios": ratios,
        "verdicts": {k: verdict(k, v) for k, v in ratios.items() if k in TARGETS},
        "large": bench.extra.get("large"),
        "rounds": {k: [{kk: vv for kk, vv in r.items() if kk != "latencies_ms"} for r in v]
                   for k, v in bench.rounds.items()},
        "batch_stats_final": {k: stats.get(k) for k in ("batches", "jobs", "rows",
                                                        "predict_calls")},
        "logs": str(tmp / "logs") if args.keep else None,
    }


def register_models(root: Path) -> None:
    """The demo forest, trained once and pushed as ``iris`` and ``irisoff``."""
    from predq.demo import train_demo_model
    from predq.shared.registry.serialization import dump_estimator
    from predq.shared.registry.store import Registry

    registry = Registry(root)
    with tempfile.TemporaryDirectory(prefix="predq-bench-model-") as d:
        artifact = Path(d) / "iris.joblib"
        dump_estimator(train_demo_model(), artifact, "joblib")
        for name in MODEL.values():
            push_model(registry, artifact, name, aliases=("production",), accepts_missing=False)


class Stopped(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C, so every child process is stopped."""


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run",
                                description="predq's benchmark (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="short phases (about 1.5 minutes)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measured window")
    p.add_argument("--rounds", type=int, default=None, help="on/off rounds of e2e and predict")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rows", type=int, default=10, help="rows per job")
    p.add_argument("--log-level", default="INFO", help="PREDQ_LOG_LEVEL of api and workers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, load results)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy record the api and workers during each phase into DIR "
                        "(pip install py-spy; it perturbs the figures: profile, don't compare)")
    p.add_argument("--profile-idle", action="store_true",
                   help="with --profile: sample waiting threads too (wall time, not CPU)")
    args = p.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stopped)
    result = run(args)
    table = markdown(result)
    result["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(table)
    print(f"\n(results: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
