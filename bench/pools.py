"""The prefork hop and its alternatives, measured side by side (issue 10, "A lean hot path").

    .venv/bin/python -m bench.pools            # 2 rounds x (3 s warm-up + 12 s) per phase
    .venv/bin/python -m bench.pools --quick    # 1 round x (2 s + 6 s): a smoke test

With Celery's prefork pool every batch is pickled to a pool process and its outcome pickled
back. The alternatives, all the same ``predq worker`` (same app, settings and argv; another
pool through ``bench.poolworker``), each on its own queue and up for the whole run:

- ``prefork``: ``predq worker -c N`` (the default, N = ``--n``, 2 = this machine's CPUs);
- ``solo``: ``--pool solo``, the batch is predicted in the consumer process itself (the
  consumer's ``pool.apply_async`` then runs the batch and its callbacks inline);
- ``threads``: ``--pool threads -c N``, N threads of the consumer process (the runtime must
  release the GIL to use more than one core);
- ``solo xN``: N solo worker processes consuming the same queue.

Two models, both the RandomForest(100) on breast_cancer of ``bench.peers``: ``tl_*`` on
treelite (the default runtime: ~0.1 ms per batch) and ``sk_*`` on the sklearn runtime
(~4 ms per call). The load is ``bench.load``: 32 clients, 10-row ``POST /predict``, every
reply checked against the local ``predict_proba`` / ``predict``; the phases (variant x
runtime) rotate round by round. It prints req/s, p50, jobs per predict call and CPU ms per
job (API, worker consumer + other processes, Redis, total), and the ratio of each variant
to prefork. A variant that fails to start or to answer is reported with its error. No Flower
runs (the workers still publish their task events). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.harness import ROOT, Stack, cpu_split, log, run_load
from bench.peers import make_bodies, train_model

RUNTIMES = {"tl": "treelite", "sk": "sklearn"}


def variants(n: int) -> dict[str, dict[str, Any]]:
    """name -> label, pool, concurrency, worker processes."""
    return {
        "prefork": {"label": f"prefork -c {n} (default)", "pool": "prefork", "c": n, "procs": 1},
        "solo": {"label": "solo (predict in the consumer)", "pool": "solo", "c": None,
                 "procs": 1},
        "threads": {"label": f"threads -c {n}", "pool": "threads", "c": n, "procs": 1},
        "solox": {"label": f"solo x{n} processes", "pool": "solo", "c": None, "procs": n},
    }


def summarize(results: list[dict[str, Any]], batches: list[dict[str, int]],
              workers: set[str]) -> dict[str, Any]:
    cpus = [cpu_split(r, workers) for r in results]
    keys = sorted({k for c in cpus for k in c})
    jobs = sum(b.get("jobs", 0) for b in batches)
    calls = sum(b.get("batches", 0) for b in batches)
    med = statistics.median
    return {
        "rate": med(r["rate"] for r in results), "rates": [r["rate"] for r in results],
        "p50_ms": med(r["latency_ms"]["p50"] or 0 for r in results),
        "p99_ms": med(r["latency_ms"]["p99"] or 0 for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:3],
        "jobs_per_call": jobs / calls if calls else None,
        "cpu_ms_per_job": {k: med(c.get(k, 0.0) for c in cpus) for k in keys},
        "workers": sorted(workers),
    }


def render(summary: dict[str, dict[str, Any]], failed: dict[str, str],
           vs: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"predq worker pools, {meta['when']}: RandomForest(100) on breast_cancer, "
        f"{meta['clients']} clients, {meta['rows']}-row POST /predict, {meta['rounds']} "
        f"round(s) x {meta['duration']} s; {meta['cpus']} CPUs, load average {meta['loadavg']}",
        "",
        "| runtime | variant | req/s | per round | vs prefork | p50 ms | jobs/call | "
        "CPU ms/job: api | worker (consumer + others) | redis | total | errors |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, runtime in RUNTIMES.items():
        base = summary.get(f"{kind}:prefork")
        for name, v in vs.items():
            key = f"{kind}:{name}"
            if name in failed:
                lines.append(f"| {runtime} | {v['label']} | failed | | | | | | | | | |")
                continue
            s = summary[key]
            c = s["cpu_ms_per_job"]
            ws = s["workers"]
            w = sum(c[k] for k in ws)
            cons = sum(c.get(f"{k}.consumer", 0.0) for k in ws)
            others = sum(c.get(f"{k}.pool", 0.0) for k in ws)
            ratio = s["rate"] / base["rate"] if base and base["rate"] else 0.0
            jpc = "" if s["jobs_per_call"] is None else f"{s['jobs_per_call']:.1f}"
            lines.append(
                f"| {runtime} | {v['label']} | {s['rate']:.0f} | "
                f"{', '.join(f'{x:.0f}' for x in s['rates'])} | {ratio:.2f} | "
                f"{s['p50_ms']:.1f} | {jpc} | {c.get('api', 0):.2f} | "
                f"{w:.2f} ({cons:.2f} + {others:.2f}) | {c.get('redis', 0):.2f} | "
                f"{c['total']:.2f} | {s['errors']} |")
    errs = [(k, s["error_samples"]) for k, s in summary.items() if s["errors"]]
    for name, why in failed.items():
        lines += ["", f"{vs[name]['label']} failed: {why}"]
    for key, samples in errs:
        lines += ["", f"{key} errors (first {len(samples)}): {samples}"]
    return "\n".join(lines)


def start_workers(stack: Stack, vs: dict[str, dict[str, Any]], body: bytes,
                  failed: dict[str, str]) -> dict[str, list[str]]:
    """Start every variant's worker(s); a variant that does not serve goes to ``failed``."""
    names: dict[str, list[str]] = {}
    for name, v in vs.items():
        names[name] = [name if v["procs"] == 1 else f"{name}{i + 1}"
                       for i in range(v["procs"])]
        for w in names[name]:
            stack.start_worker(w, [f"pool.{name}"], concurrency=v["c"], pool=v["pool"])
    for name in vs:
        try:
            stack.wait_ready([f"{kind}_{name}" for kind in RUNTIMES], body, timeout=120)
        except Exception as e:
            tails = "\n".join(stack.workers[w].tail(15) for w in names[name])
            failed[name] = f"{e!r}\n{tails}"
            log("pools", f"{name} failed: {e!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pools", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s + 6 s")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--n", type=int, default=os.cpu_count() or 2,
                    help="processes / threads of the prefork, threads and solo-xN variants")
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--log-level", default="WARNING", help="the workers' PREDQ_LOG_LEVEL")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pools.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 2.0, 6.0
    vs = variants(args.n)
    if args.only:
        vs = {k: v for k, v in vs.items() if k in args.only.split(",")}

    tmp = Path(tempfile.mkdtemp(prefix="predq-pools-"))
    model_file = tmp / "cancer.joblib"
    model = train_model(model_file)
    bodies = tmp / "bodies.json"
    doc = make_bodies(model, args.rows)
    bodies.write_bytes(orjson.dumps(doc))
    queues = {f"{kind}_{name}": f"pool.{name}" for name in vs for kind in RUNTIMES}
    stack = Stack(tmp, queues, env={"PREDQ_LOG_LEVEL": args.log_level}, tag="pools")
    failed: dict[str, str] = {}
    try:
        for kind, runtime in RUNTIMES.items():
            for name in vs:
                m = stack.push(model_file, f"{kind}_{name}", runtime)
                if m.runtime.name != runtime:
                    raise SystemExit(f"{kind}_{name}: runtime {m.runtime.name}, not {runtime}")
        stack.start_api()
        names = start_workers(stack, vs, orjson.dumps(doc["bodies"][0]), failed)
        log("pools", f"API at {stack.url}, workers {list(stack.workers)}; failed: "
            f"{list(failed)}")
        phases = [(kind, name) for kind in RUNTIMES for name in vs if name not in failed]
        results: dict[str, list[dict[str, Any]]] = {}
        batches: dict[str, list[dict[str, int]]] = {}
        for i in range(args.rounds):
            shift = i * len(phases) // max(1, args.rounds)
            for kind, name in phases[shift:] + phases[:shift]:
                key = f"{kind}:{name}"
                before = stack.batch_counters()
                res = run_load("predict", stack.url, tmp / f"load-{i}-{kind}-{name}.json",
                               models=[f"{kind}_{name}"], bodies=bodies,
                               groups=stack.group(*names[name]), clients=args.clients,
                               rows=args.rows, warmup=args.warmup, duration=args.duration)
                after = stack.batch_counters()
                batches.setdefault(key, []).append(
                    {k: after.get(k, 0) - before.get(k, 0) for k in ("jobs", "batches")})
                results.setdefault(key, []).append(res)
                log("pools", f"round {i + 1} {key}: {res['rate']:.0f} req/s, p50 "
                    f"{res['latency_ms']['p50']} ms, errors {res['errors']} "
                    f"{res['error_samples'][:1]}")
                for w in names[name]:
                    if not stack.workers[w].alive():
                        failed.setdefault(name, f"worker {w} exited: "
                                                f"{stack.workers[w].tail(15)}")
        summary = {k: summarize(results[k], batches[k], set(names[k.split(":")[1]]))
                   for k in results}
        meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "clients": args.clients, "rows": args.rows, "rounds": args.rounds,
                "duration": args.duration, "cpus": os.cpu_count(), "n": args.n,
                "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg())}
        print(render(summary, failed, vs, meta))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps({"meta": meta, "summary": summary, "failed": failed},
                                          option=orjson.OPT_INDENT_2))
        log("pools", f"results in {args.out}")
    finally:
        stack.close()
        if args.keep:
            log("pools", f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
