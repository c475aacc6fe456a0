"""predq's benchmark: one command, every figure of the performance targets side by side.

    .venv/bin/python -m bench.run            # full run (about 3 minutes)
    .venv/bin/python -m bench.run --quick    # short run (about 1 minute)

It starts its own redis-server (127.0.0.1, free port), registers the demo model
(RandomForest(100) on iris) in a temporary registry, starts the real API
(``python -m predq api``) and real workers (``python -m predq worker``) as subprocesses, and
drives them from a separate load-generator process (``bench.load``: asyncio + httpx, 32
clients, ``POST /jobs`` then ``GET /jobs/{id}?wait=30``). Phases, in this order:

1. ``enqueue``    -- no worker: the API's own enqueue-only rate (POST /jobs).
2. ``drain on``   -- start a worker (batching on) on the backlog that phase 1 left.
3. ``e2e on``     -- 32 clients, submit + long-poll, batching on.
4. ``predict on`` -- 32 clients, POST /predict (full mode only).
5. ``idle on``    -- one client, sequential /predict, 1 and 10 rows.
6. ``large``      -- one 100,000-row job end to end; then the local reference (validate the
   same body with the API's schema + one predict_proba).
7. stop the worker; ``fill`` a backlog; ``drain off`` (PREDQ_MAX_BATCH_JOBS=1); ``e2e off``;
   ``predict off``; ``idle off``.

Throughputs are jobs completed per second inside the measured window (after a warm-up).
CPU per job is read from /proc for each process group (the worker split into the Celery
consumer and its pool processes) over the same window. The machine is shared and noisy:
compare only the ratios, which are measured in the same run. Nothing here asserts a time.
Results: stdout (markdown) and ``bench/results/latest.json``.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

if __package__ in (None, ""):  # ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu  # noqa: E402
from predq.procs import Child, Supervisor, wait_for_url  # noqa: E402
from predq.redis_server import RedisServer, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PREFIX = "bench"
QUEUE = "predq"

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

    warmup: float
    duration: float
    fill_off: int
    drain_timeout: float
    seq_count: int
    large_reps: int
    predict_phase: bool


FULL = Profile(warmup=4.0, duration=20.0, fill_off=3000, drain_timeout=90.0, seq_count=200,
               large_reps=3, predict_phase=True)
QUICK = Profile(warmup=2.0, duration=6.0, fill_off=800, drain_timeout=40.0, seq_count=60,
                large_reps=1, predict_phase=False)


@dataclass
class Bench:
    args: argparse.Namespace
    prof: Profile
    tmp: Path
    redis: RedisServer
    sup: Supervisor
    env: dict[str, str]
    url: str = ""
    api: Child | None = None
    worker: Child | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- processes ----------------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def start_api(self) -> None:
        port = free_port()
        self.api = self.sup.start(
            "api", [sys.executable, "-m", "predq", "api", "--host", "127.0.0.1",
                    "--port", str(port)],
            env=self.env, cwd=self.tmp, log_path=self.tmp / "logs" / "api.log")
        self.url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{self.url}/healthz", timeout=60, children=[self.api])

    def start_worker(self, batching: bool) -> Child:
        env = dict(self.env)
        if not batching:
            env["PREDQ_MAX_BATCH_JOBS"] = "1"
        name = f"bench-{'on' if batching else 'off'}@%h"
        self.worker = self.sup.start(
            f"worker-{'on' if batching else 'off'}",
            [sys.executable, "-m", "predq", "worker", "--hostname", name],
            env=env, cwd=self.tmp,
            log_path=self.tmp / "logs" / f"worker-{'on' if batching else 'off'}.log")
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop(signal.SIGTERM, timeout=20)
            self.sup.children.remove(self.worker)
            self.worker = None

    def groups(self) -> dict[str, int]:
        g = {"api": self.api.pgid if self.api else 0, "redis": self.redis.pid or 0}
        if self.worker is not None:
            g["worker"] = self.worker.pgid
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

    # -- phases -----------------------------------------------------------------------------

    def load(self, mode: str, *extra: str, timeout: float = 200.0) -> dict[str, Any]:
        out = self.tmp / f"load-{mode}-{len(self.phases)}-{time.monotonic_ns()}.json"
        argv = [sys.executable, "-m", "bench.load", mode, "--url", self.url, "--out", str(out),
                "--clients", str(self.args.clients), "--rows", str(self.args.rows), *extra]
        for name, pgid in self.groups().items():
            argv += ["--watch", f"{name}={pgid}"]
        proc = subprocess.run(argv, env=self.env, cwd=ROOT, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench.load {mode} failed ({proc.returncode}):\n"
                               f"{proc.stdout.decode(errors='replace')[-3000:]}")
        return orjson.loads(out.read_bytes())  # type: ignore[no-any-return]

    def spy(self, name: str, delay: float, duration: float) -> list[subprocess.Popen[bytes]]:
        """With --profile: py-spy record (raw collapsed stacks) of api and worker."""
        if not self.args.profile:
            return []
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        procs = []
        for group, pgid in self.groups().items():
            if group == "redis":
                continue
            out = self.args.profile / f"{name.replace(' ', '_')}.{group}.txt"
            cmd = (f"sleep {delay:g}; exec {spy} record --nonblocking --subprocesses -r 100 "
                   f"-d {max(1, int(duration))} -f raw -o {out} -p {pgid}")
            procs.append(subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        return procs

    def unspy(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def timed_phase(self, name: str, mode: str, batching: bool | None) -> dict[str, Any]:
        self.log(f"phase {name}: {self.prof.warmup:g} s warm-up + {self.prof.duration:g} s")
        before = self.batch_counters()
        spies = self.spy(name, self.prof.warmup + 0.5, self.prof.duration - 1)
        res = self.load(mode, "--warmup", str(self.prof.warmup),
                        "--duration", str(self.prof.duration))
        self.unspy(spies)
        after = self.batch_counters()
        phase = {"phase": name, "mode": mode, "batching": batching, "jobs_s": res["rate"],
                 "completed": res["completed"], "latency_ms": res["latency_ms"],
                 "errors": res["errors"], "error_samples": res["error_samples"],
                 "requests_per_job": (res["requests_in_window"] / res["completed"]
                                      if res["completed"] else None),
                 "cpu_s": res["cpu_s"], **_batch_delta(before, after)}
        self.phases.append(phase)
        self.log(f"  {res['rate']:.0f} jobs/s, p50 {_f(res['latency_ms']['p50'])} ms, "
                 f"{_f(phase['requests_per_job'], 2)} requests/job, "
                 f"{phase['mean_jobs_per_batch']} jobs/batch, "
                 f"errors {res['errors']} {res['error_samples'][:1]}")
        return phase

    def drain_phase(self, name: str, batching: bool) -> dict[str, Any]:
        """Start a worker on the backlog in the queue; the rate between 10% and 90% done."""
        c = self.rclient()
        try:
            backlog = int(c.llen(QUEUE))
            before = self.batch_counters()
            base = before.get("jobs", 0)
            self.log(f"phase {name}: draining {backlog} queued jobs")
            t_launch = time.perf_counter()
            worker = self.start_worker(batching)
            spies = self.spy(name, 2.5, 5)
            lo, hi = int(backlog * 0.1), int(backlog * 0.9)
            deadline = t_launch + self.prof.drain_timeout
            first = lo_s = hi_s = None
            snap_lo: cpu.Snapshot = {}
            snap_hi: cpu.Snapshot = {}
            done = 0
            while time.perf_counter() < deadline:
                worker.check()
                done = int(c.hget(f"{PREFIX}:stats:batches", "jobs") or 0) - base
                now = time.perf_counter()
                if first is None and done > 0:
                    first = now
                if lo_s is None and done >= max(lo, 1):
                    lo_s, lo_n = (now, done)
                    snap_lo = cpu.snapshot(self.groups())
                if lo_s is not None and hi_s is None and done >= hi:
                    hi_s, hi_n = (now, done)
                    snap_hi = cpu.resnapshot(snap_lo)
                if done >= backlog:
                    break
                time.sleep(0.02)
            t_end = time.perf_counter()
            self.unspy(spies)
        finally:
            c.close()
        if lo_s is None:
            raise RuntimeError(f"{name}: the worker completed nothing in "
                               f"{self.prof.drain_timeout:g} s:\n{worker.tail(30)}")
        if hi_s is None:  # timed out: use what we have
            hi_s, hi_n = t_end, done
            snap_hi = cpu.resnapshot(snap_lo)
        n = hi_n - lo_n
        rate = n / (hi_s - lo_s) if hi_s > lo_s else 0.0
        usage = cpu.delta(snap_lo, snap_hi, self.groups())
        after = self.batch_counters()
        phase = {"phase": name, "mode": "drain", "batching": batching, "jobs_s": rate,
                 "completed": n, "backlog": backlog, "drained": done,
                 "first_done_after_launch_s": (first or t_end) - t_launch,
                 "total_s_incl_worker_start": t_end - t_launch, "latency_ms": None,
                 "errors": backlog - done, "error_samples": [], "cpu_s": usage,
                 **_batch_delta(before, after)}
        self.phases.append(phase)
        self.log(f"  {rate:.0f} jobs/s over {n} jobs (10%..90%), backlog {backlog}, "
                 f"{phase['mean_jobs_per_batch']} jobs/batch")
        return phase

    def fill(self, count: int) -> dict[str, Any]:
        self.log(f"fill: POST {count} jobs with no worker running")
        res = self.load("fill", "--count", str(count), "--max-time", "120")
        self.extra["fill_off"] = res
        self.log(f"  {res['count']} jobs in {res['elapsed_s']:.1f} s ({res['rate']:.0f}/s)")
        return res

    def idle_phase(self, batching: bool) -> dict[str, Any]:
        name = f"idle {'on' if batching else 'off'}"
        self.log(f"phase {name}: sequential /predict, {self.prof.seq_count} calls each")
        res = self.load("seq", "--count", str(self.prof.seq_count), "--warmup-count", "20",
                        "--rows-list", "1,10", "--max-time", "120")
        for rows, r in res["by_rows"].items():
            lat = r["latency_ms"]
            self.phases.append({"phase": f"{name} ({rows} row{'s' if rows != '1' else ''})",
                                "mode": "seq", "batching": batching, "rows": int(rows),
                                "jobs_s": None, "completed": lat["n"], "latency_ms": lat,
                                "errors": r["errors"], "error_samples": [], "cpu_s": {}})
            self.log(f"  {rows} rows: p50 {_f(lat['p50'])} ms, p99 {_f(lat['p99'])} ms")
        return res

    def large_job(self) -> dict[str, Any]:
        """One 100k-row job end to end vs. validating the body + one local predict_proba."""
        from predq.demo import iris_sample_rows

        n = 100_000
        body = orjson.dumps({"inputs": iris_sample_rows(n, seed=7)})
        self.log(f"phase large: one {n}-row job ({len(body) / 1e6:.1f} MB body), "
                 f"{self.prof.large_reps} rep(s)")
        runs = []
        with httpx.Client(base_url=self.url, trust_env=False, timeout=120) as h:
            for _ in range(self.prof.large_reps):
                snap = cpu.snapshot(self.groups())
                t0 = time.perf_counter()
                r = h.post("/v1/models/iris/jobs", content=body,
                           headers={"Content-Type": "application/json"})
                t_post = time.perf_counter() - t0
                if r.status_code != 202:
                    raise RuntimeError(f"large job: {r.status_code} {r.text[:500]}")
                job_id = r.json()["id"]
                for _ in range(20):
                    g = h.get(f"/v1/jobs/{job_id}?wait=30")  # reads the whole body
                    t_got = time.perf_counter()
                    job = orjson.loads(g.content) if g.status_code == 200 else {}
                    status = job.get("status")
                    if status not in ("queued", "running"):
                        break
                total = t_got - t0  # the client's parse of the outputs is not counted
                usage = cpu.delta(snap, cpu.resnapshot(snap), self.groups())
                if status != "succeeded" or len(job["outputs"]) != n:
                    raise RuntimeError(f"large job ended {status}: {g.text[:500]}")
                runs.append({
                    "total_s": total, "post_s": t_post, "response_bytes": len(g.content),
                    "queue_wait_s": _ts(job["started_at"]) - _ts(job["created_at"]),
                    "worker_s": _ts(job["finished_at"]) - _ts(job["started_at"]),
                    "cpu_s": usage,
                })
                self.log(f"  end to end {total:.3f} s (POST {t_post:.3f} s, worker "
                         f"{runs[-1]['worker_s']:.3f} s)")
        ref = local_reference(self.env["PREDQ_REGISTRY_ROOT"], body, self.prof.large_reps)
        best = min(runs, key=lambda x: x["total_s"])
        med = statistics.median(x["total_s"] for x in runs)
        out = {"rows": n, "body_bytes": len(body), "runs": runs, "median_s": med,
               "best": best, "reference": ref,
               "ratio_schema": med / (ref["schema_parse_s"] + ref["predict_proba_s"]),
               "ratio_typeadapter": med / (ref["typeadapter_s"] + ref["predict_proba_s"])}
        self.extra["large"] = out
        self.log(f"  reference: parse {ref['schema_parse_s']:.3f} s (TypeAdapter "
                 f"{ref['typeadapter_s']:.3f} s) + predict_proba {ref['predict_proba_s']:.3f} s"
                 f" -> ratio {out['ratio_schema']:.2f}")
        return out


def local_reference(registry_root: str, body: bytes, reps: int) -> dict[str, Any]:
    """Median seconds of: ModelSchema.parse(body), TypeAdapter(list[Row]).validate_json(inputs),
    and one predict_proba of the same rows (a DataFrame, as the model was fitted on one)."""
    import pandas as pd
    from pydantic import TypeAdapter

    from shared.registry import Registry
    from shared.schema import ModelSchema
    from shared.serialization import load_estimator
    from shared.settings import Settings

    s = Settings(registry_root=Path(registry_root), _env_file=None)  # type: ignore[call-arg]
    reg = Registry(s.registry_root)
    manifest = reg.resolve("iris", None)
    schema = ModelSchema(manifest, max_rows=s.max_rows_per_job, max_string=s.max_string_length,
                         max_metadata_bytes=s.max_metadata_bytes)
    est = load_estimator(reg.artifact_path(manifest), fmt=manifest.format,
                         expected_sha256=manifest.sha256, trusted_types=manifest.trusted_types)
    rows_json = orjson.dumps(orjson.loads(body)["inputs"])
    adapter = TypeAdapter(list[schema.row_type])  # type: ignore[name-defined]
    names = [f.name for f in manifest.features]
    times: dict[str, list[float]] = {"schema_parse_s": [], "typeadapter_s": [],
                                     "predict_proba_s": []}
    for _ in range(max(reps, 2)):
        t = time.perf_counter()
        schema.parse(body, allow_webhook=True)
        times["schema_parse_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        rows = adapter.validate_json(rows_json)
        times["typeadapter_s"].append(time.perf_counter() - t)
        frame = pd.DataFrame(rows, columns=names)
        t = time.perf_counter()
        est.predict_proba(frame)
        times["predict_proba_s"].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


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
    out = {}
    for name, d in phase["cpu_s"].items():
        out[name] = d["total"] * 1000 / n
        if name == "worker":
            out["worker_consumer"] = d["leader"] * 1000 / n
            out["worker_pool"] = d["others"] * 1000 / n
    out["total"] = sum(v for k, v in out.items() if k in ("api", "worker", "redis", "client"))
    return out


def compute_ratios(phases: dict[str, dict[str, Any]], large: dict[str, Any] | None
                   ) -> dict[str, float | None]:
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

    return {
        "batching_gain_e2e": div(rate("e2e on"), rate("e2e off")),
        "batching_gain_drain": div(rate("drain on"), rate("drain off")),
        "batching_gain_predict": div(rate("predict on"), rate("predict off")),
        "e2e_over_enqueue": div(rate("e2e on"), rate("enqueue")),
        "idle_p50_delta_ms_1row": sub(p50("idle on (1 row)"), p50("idle off (1 row)")),
        "idle_p50_delta_ms_10row": sub(p50("idle on (10 rows)"), p50("idle off (10 rows)")),
        "large_job_ratio": large["ratio_schema"] if large else None,
        "large_job_ratio_vs_typeadapter": large["ratio_typeadapter"] if large else None,
    }


def verdict(key: str, value: float | None) -> str:
    if key not in TARGETS or value is None:
        return ""
    op, target = TARGETS[key]
    ok = value >= target if op == ">=" else value <= target
    return "PASS" if ok else "MISS"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"predq benchmark — {result['when']} — {result['mode']} run, {result['clients']} "
        f"clients, {result['rows']}-row jobs, RandomForest(100) on iris, "
        f"{result['host']['cpus']} CPUs, worker concurrency {result['worker_concurrency']}",
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
    r = result["ratios"]
    large = result.get("large")
    lines += ["", "| ratio | value | target | verdict |", "|---|---:|---:|---|"]
    labels = {
        "batching_gain_e2e": "micro-batching gain, end to end (e2e on / e2e off)",
        "batching_gain_drain": "micro-batching gain, backlog drain (drain on / drain off)",
        "batching_gain_predict": "micro-batching gain, POST /predict (predict on / off)",
        "e2e_over_enqueue": "end-to-end throughput / enqueue-only rate",
        "idle_p50_delta_ms_1row": "idle p50, batching on − off, 1 row (ms)",
        "idle_p50_delta_ms_10row": "idle p50, batching on − off, 10 rows (ms)",
        "large_job_ratio": "100k-row job e2e / (ModelSchema.parse + predict_proba)",
        "large_job_ratio_vs_typeadapter":
            "100k-row job e2e / (TypeAdapter(list[Row]).validate_json + predict_proba)",
    }
    for key, label in labels.items():
        v = r.get(key)
        if v is None and key == "batching_gain_predict":
            continue
        t = TARGETS.get(key)
        target = f"{t[0]} {t[1]:g}" if t else "(info)"
        lines.append(f"| {label} | {_f(v, 2)} | {target} | {verdict(key, v)} |")
    if large:
        ref = large["reference"]
        b = large["best"]
        lines += [
            "",
            f"Large job ({large['rows']} rows, {large['body_bytes'] / 1e6:.1f} MB body, "
            f"{b['response_bytes'] / 1e6:.1f} MB response): median e2e "
            f"{large['median_s']:.3f} s; best run: POST {b['post_s']:.3f} s, queue wait "
            f"{b['queue_wait_s']:.3f} s, worker {b['worker_s']:.3f} s. Reference: "
            f"ModelSchema.parse {ref['schema_parse_s']:.3f} s, TypeAdapter.validate_json "
            f"{ref['typeadapter_s']:.3f} s, predict_proba {ref['predict_proba_s']:.3f} s. "
            "CPU s of the best run: " + ", ".join(
                f"{k} {v['total']:.2f}" for k, v in b["cpu_s"].items()) + ".",
        ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    prof = QUICK if args.quick else FULL
    if args.duration:
        prof.duration = args.duration
    tmp = Path(tempfile.mkdtemp(prefix="predq-bench-"))
    (tmp / "logs").mkdir()
    registry_root = tmp / "registry"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    pythonpath = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)
    redis = RedisServer(dir=tmp / "redis")
    sup = Supervisor()
    bench: Bench | None = None
    try:
        redis.start()
        env = {**base, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
               "PREDQ_REDIS_URL": redis.url, "PREDQ_REGISTRY_ROOT": str(registry_root),
               "PREDQ_KEY_PREFIX": PREFIX, "PREDQ_DEFAULT_QUEUE": QUEUE,
               "PREDQ_AUTH_ENABLED": "false", "PREDQ_LOG_LEVEL": args.log_level}
        bench = Bench(args, prof, tmp, redis, sup, env)
        bench.log(f"redis {redis.url}; registering the demo model; logs in {tmp / 'logs'}")
        from predq.demo import ensure_demo
        from shared.registry import Registry

        ensure_demo(Registry(registry_root))
        bench.start_api()
        bench.log(f"api {bench.url}")

        # -- batching on ---------------------------------------------------------------
        bench.timed_phase("enqueue", "enqueue", None)
        bench.drain_phase("drain on", batching=True)
        bench.timed_phase("e2e on", "jobs", True)
        if prof.predict_phase:
            bench.timed_phase("predict on", "predict", True)
        bench.idle_phase(True)
        bench.large_job()
        bench.stop_worker()
        # -- batching off (PREDQ_MAX_BATCH_JOBS=1) -------------------------------------
        bench.fill(prof.fill_off)
        bench.drain_phase("drain off", batching=False)
        bench.timed_phase("e2e off", "jobs", False)
        if prof.predict_phase:
            bench.timed_phase("predict off", "predict", False)
        bench.idle_phase(False)
        stats = bench.stats_http()
        bench.stop_worker()
    except BaseException:
        if bench is not None:
            for c in sup.children:
                print(f"--- {c.name} log tail ---\n{c.tail(30)}", file=sys.stderr)
        raise
    finally:
        sup.stop_all(timeout=20)
        redis.close()
        if not args.keep and bench is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    by_name = {p["phase"]: p for p in bench.phases}
    ratios = compute_ratios(by_name, bench.extra.get("large"))
    for p in bench.phases:
        p["cpu_ms_per_job"] = _cpu_ms_per_job(p)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full", "clients": args.clients, "rows": args.rows,
        "profile": prof.__dict__, "host": {"cpus": os.cpu_count(), "python":
                                           platform.python_version(),
                                           "loadavg_end": os.getloadavg()},
        "worker_concurrency": os.cpu_count(), "phases": bench.phases, "ratios": ratios,
        "verdicts": {k: verdict(k, v) for k, v in ratios.items() if k in TARGETS},
        "large": bench.extra.get("large"), "fill_off": bench.extra.get("fill_off"),
        "batch_stats_final": {k: stats[k] for k in ("batches", "jobs", "rows", "predict_calls")},
        "logs": str(tmp / "logs") if args.keep else None,
    }


class Stopped(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C, so every child process is stopped."""


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short phases (about 1 minute)")
    p.add_argument("--duration", type=float, default=None, help="seconds per timed phase")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rows", type=int, default=10, help="rows per job")
    p.add_argument("--log-level", default="INFO", help="PREDQ_LOG_LEVEL of api and worker")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, load results)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy record the api and worker during each timed phase into DIR "
                        "(pip install py-spy; perturbs the figures: profile, don't compare)")
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
