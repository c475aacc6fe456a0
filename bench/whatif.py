"""What-if runs: two batching workers side by side, A (baseline) and B (a variant).

    .venv/bin/python -m bench.whatif --b-patches no-events
    .venv/bin/python -m bench.whatif --b-env PREDQ_WORKER_CONCURRENCY=1
    .venv/bin/python -m bench.whatif --a-patches no-events --b-patches no-events,ack-batch

Same stack as ``bench.run`` (own Redis, the real API, real workers), but both workers batch:
A serves ``iris`` (queue ``predq``), B serves ``irisoff`` (queue ``predq.off``) and runs
``bench.whatif_worker`` with the given patches and/or environment. Phases: ``--rounds``
alternating rounds of the end-to-end load (32 clients, submit + long-poll), then as many
rounds of a ``--backlog``-job backlog drained by A and by B (jobs/s between 10% and 90%).
Prints the table of ``bench.run`` and the B/A ratios (rounds alternate A-B, B-A, ...).
A profiling aid for sizing fixes; not part of the benchmark's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import run as R
from predq.procs import Child, Supervisor
from predq.redis_server import RedisServer


class WhatIf(R.Bench):
    def start_worker(self, batching: bool) -> Child:
        a = self.args
        patches = a.a_patches if batching else a.b_patches
        extra = dict(kv.split("=", 1) for kv in (a.a_env if batching else a.b_env))
        tag = "A" if batching else "B"
        child = self.sup.start(
            f"worker-{tag}",
            [sys.executable, "-m", "bench.whatif_worker", patches or "none", "--",
             "--hostname", f"whatif-{tag}@%h", "--queues", R.QUEUE[batching]],
            env={**self.env, **extra}, cwd=self.tmp,
            log_path=self.tmp / "logs" / f"worker-{tag}.log")
        self.workers[batching] = child
        return child


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.whatif", description=__doc__)
    p.add_argument("--a-patches", default="", help="patches of worker A (bench.whatif_worker)")
    p.add_argument("--b-patches", default="", help="patches of worker B")
    p.add_argument("--a-env", action="append", default=[], help="K=V for worker A")
    p.add_argument("--b-env", action="append", default=[], help="K=V for worker B")
    p.add_argument("--backlog", type=int, default=6000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rows", type=int, default=10)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument("--profile-idle", action="store_true")
    p.add_argument("--out", type=Path, default=R.RESULTS / "whatif.json")
    args = p.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, R._raise_stopped)
    prof = R.Profile(warmup=3.0, duration=args.duration, rounds=args.rounds,
                     drain_rounds=args.rounds, backlog_on=args.backlog,
                     backlog_off=args.backlog, drain_timeout=60.0, seq_count=0,
                     large_reps=0, predict_phase=False)
    tmp = Path(tempfile.mkdtemp(prefix="predq-whatif-"))
    (tmp / "logs").mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    redis = RedisServer(dir=tmp / "redis")
    sup = Supervisor()
    bench: WhatIf | None = None
    try:
        redis.start()
        env = {**base, "PYTHONPATH": str(R.ROOT), "PYTHONUNBUFFERED": "1",
               "PREDQ_REDIS_URL": redis.url, "PREDQ_REGISTRY_ROOT": str(tmp / "registry"),
               "PREDQ_KEY_PREFIX": R.PREFIX, "PREDQ_DEFAULT_QUEUE": R.QUEUE[True],
               "PREDQ_MODEL_QUEUES": json.dumps({R.MODEL[False]: R.QUEUE[False]}),
               "PREDQ_AUTH_ENABLED": "false", "PREDQ_LOG_LEVEL": args.log_level,
               "PREDQ_RATE_LIMIT": "1000000/second"}
        bench = WhatIf(args, prof, tmp, redis, sup, env)
        R.register_models(tmp / "registry")
        bench.start_apis()
        bench.start_worker(True)
        bench.start_worker(False)
        bench.wait_workers()
        bench.alternating("e2e", "jobs")
        bench.drain_phase()
    except BaseException:
        if bench is not None:
            for c in sup.children:
                print(f"--- {c.name} log tail ---\n{c.tail(20)}", file=sys.stderr)
        raise
    finally:
        sup.stop_all(timeout=20)
        redis.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for ph in bench.phases:
        ph["phase"] = ph["phase"].replace(" on", " A").replace(" off", " B")
    by = {ph["phase"]: ph for ph in bench.phases}
    def per_round(label: str) -> list[float]:
        return [b["rate"] / a["rate"] for a, b in
                zip(bench.rounds[f"{label} on"], bench.rounds[f"{label} off"], strict=False)]

    ratios = {
        "drain B/A": by["drain B"]["jobs_s"] / by["drain A"]["jobs_s"],
        "e2e B/A": by["e2e B"]["jobs_s"] / by["e2e A"]["jobs_s"],
        "drain B/A per round": per_round("drain"), "e2e B/A per round": per_round("e2e"),
    }
    result: dict[str, Any] = {
        "a": {"patches": args.a_patches, "env": args.a_env},
        "b": {"patches": args.b_patches, "env": args.b_env},
        "phases": bench.phases, "ratios": ratios,
        "host": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
    }
    lines = [f"A: patches [{args.a_patches or '-'}] env {args.a_env or '-'}; "
             f"B: patches [{args.b_patches or '-'}] env {args.b_env or '-'}; "
             f"load average at the end {os.getloadavg()[0]:.1f}", "",
             "| phase | jobs/s | p50 ms | p99 ms | jobs/batch | CPU ms/job: API | worker "
             "(consumer + pool) | redis | client | total |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ph in bench.phases:
        lat = ph.get("latency_ms") or {}
        c = R._cpu_ms_per_job(ph)
        worker = (f"{c['worker']:.2f} ({c['worker_consumer']:.2f} + {c['worker_pool']:.2f})"
                  if "worker" in c else "-")
        lines.append(f"| {ph['phase']} | {R._f(ph['jobs_s'], 0)} | {R._f(lat.get('p50'))} | "
                     f"{R._f(lat.get('p99'))} | {R._f(ph.get('mean_jobs_per_batch'))} | "
                     f"{R._f(c.get('api'), 2)} | {worker} | {R._f(c.get('redis'), 2)} | "
                     f"{R._f(c.get('client'), 2)} | {R._f(c.get('total'), 2)} |")
    lines += R.stages_table([ph for ph in bench.phases if ph.get("stages_p50_ms")])
    lines += ["", f"e2e B/A = {ratios['e2e B/A']:.2f} (rounds: "
              f"{', '.join(f'{x:.2f}' for x in ratios['e2e B/A per round'])}); drain B/A = "
              f"{ratios['drain B/A']:.2f} (rounds: "
              f"{', '.join(f'{x:.2f}' for x in ratios['drain B/A per round'])})"]
    table = "\n".join(lines)
    result["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
