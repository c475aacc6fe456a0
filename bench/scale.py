"""Do two worker processes on two queues scale a CPU-bound model? (issue 10, "Memory and scale")

    .venv/bin/python -m bench.scale            # 2 rounds x (5 s warm-up + 20 s) per variant
    .venv/bin/python -m bench.scale --quick    # 1 round x (2 s + 8 s): a smoke test

The model is CPU-bound by construction: a Pipeline(StandardScaler, MLPClassifier) with
``--hidden`` layers (default 2048, 2048, 2048) on breast_cancer's 30 named features, pushed
with ``--runtime sklearn``. Its cost grows with the rows (~0.8 ms per row for predict_proba +
predict on this machine, single-threaded), so micro-batching cannot amortize it away: with
the batching a forest's per-call overhead disappears, and its worker is then not the
bottleneck (the API is). BLAS runs one thread per worker process (``--blas-threads 1``:
OPENBLAS/OMP/MKL_NUM_THREADS), so that a process is one core's worth of model, and the
comparison is between processes, not between BLAS thread counts.

The same model file is registered four times, each name on its own queue
(``PREDQ_MODEL_QUEUES``), and every worker stays up for the whole run
(``bench.harness.Stack``; one API, one Redis, no Flower):

- **one**: one worker process, ``predq worker -c 1 --queues scale.one.a,scale.one.b``, serving
  ``mlp_a`` and ``mlp_b`` (so it holds both models: its RSS is the "two models loaded" figure);
- **two**: two worker processes, ``-c 1`` each, one on ``scale.two.c`` (``mlp_c``), the other
  on ``scale.two.d`` (``mlp_d``).

The same closed-loop load (``bench.load``, 32 clients, 10-row ``POST /predict``, every reply
checked against the local ``predict_proba`` / ``predict``) is split evenly between the two
models of a variant; the variants alternate round by round, seconds apart. It prints req/s,
latency, jobs per predict call, CPU per job of each and the cores that CPU adds up to (all
the watched processes and the load generator: on a 2-core machine, 2.0 is the ceiling),
beside the cores the whole machine kept busy (the difference is other tenants'), the
ratio two/one (per round and the ratio of the medians), then VmRSS, PSS and anonymous memory
of every worker process. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import orjson

from bench.harness import ROOT, Stack, cpu_split, log, memory_of, run_load
from bench.peers import make_bodies

VARIANTS: dict[str, dict[str, Any]] = {
    "one": {"label": "one worker process (-c 1), both queues",
            "models": {"mlp_a": "scale.one.a", "mlp_b": "scale.one.b"},
            "workers": {"w1": ["scale.one.a", "scale.one.b"]}},
    "two": {"label": "two worker processes (-c 1 each), one queue each",
            "models": {"mlp_c": "scale.two.c", "mlp_d": "scale.two.d"},
            "workers": {"w2c": ["scale.two.c"], "w2d": ["scale.two.d"]}},
}


def train_model(path: Path, hidden: tuple[int, ...]) -> Any:
    """A CPU-bound Pipeline: StandardScaler + a wide MLP, fitted (briefly) on named columns."""
    import joblib
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    x = data.data.rename(columns=lambda c: c.replace(" ", "_"))
    y = np.asarray(data.target_names)[data.target]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: its accuracy is not the point
        model = make_pipeline(StandardScaler(),
                              MLPClassifier(hidden, max_iter=3, random_state=0)).fit(x, y)
    joblib.dump(model, path)
    return model


def summarize(results: list[dict[str, Any]], batches: list[dict[str, int]],
              workers: set[str]) -> dict[str, Any]:
    cpus = [cpu_split(r, workers) for r in results]
    keys = sorted({k for c in cpus for k in c})
    jobs = sum(b.get("jobs", 0) for b in batches)
    calls = sum(b.get("batches", 0) for b in batches)
    return {
        "rate": statistics.median(r["rate"] for r in results),
        "rates": [r["rate"] for r in results],
        "p50_ms": statistics.median(r["latency_ms"]["p50"] or 0 for r in results),
        "p99_ms": statistics.median(r["latency_ms"]["p99"] or 0 for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:5],
        "jobs_per_call": jobs / calls if calls else None,
        "cpu_ms_per_job": {k: statistics.median(c.get(k, 0.0) for c in cpus) for k in keys},
        "machine_cores": statistics.median(r.get("machine_cores_busy") or 0.0
                                           for r in results),
    }


def render(summary: dict[str, Any], memory: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"predq scale, {meta['when']}: {meta['model']}, runtime sklearn, BLAS threads per "
        f"process {meta['blas_threads']}; {meta['clients']} clients, {meta['rows']}-row "
        f"POST /predict, {meta['rounds']} round(s) x {meta['duration']} s; "
        f"{meta['cpus']} CPUs, load average {meta['loadavg']}",
        "",
        "| variant | req/s | per round | p50 ms | p99 ms | jobs/call | CPU ms/job: api | "
        "workers (consumer + pool) | redis | total | client | cores busy | machine busy | "
        "errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in VARIANTS.items():
        s = summary[name]
        c = s["cpu_ms_per_job"]
        ws = list(v["workers"])
        w = sum(c.get(n, 0.0) for n in ws)
        cons = sum(c.get(f"{n}.consumer", 0.0) for n in ws)
        pool = sum(c.get(f"{n}.pool", 0.0) for n in ws)
        jpc = "" if s["jobs_per_call"] is None else f"{s['jobs_per_call']:.1f}"
        lines.append(
            f"| {v['label']} | {s['rate']:.1f} | {', '.join(f'{x:.1f}' for x in s['rates'])} | "
            f"{s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {jpc} | {c.get('api', 0):.2f} | "
            f"{w:.2f} ({cons:.2f} + {pool:.2f}) | {c.get('redis', 0):.2f} | "
            f"{c['total']:.2f} | {c.get('client', 0):.2f} | "
            f"{(c['total'] + c.get('client', 0)) * s['rate'] / 1000:.2f} | "
            f"{s['machine_cores']:.2f} | {s['errors']} |")
    one, two = summary["one"], summary["two"]
    per_round = [b / a if a else 0.0 for a, b in zip(one["rates"], two["rates"], strict=True)]
    ratio = two["rate"] / one["rate"] if one["rate"] else 0.0
    lines += ["", f"ratio two/one (req/s): {ratio:.2f} (per round: "
              f"{', '.join(f'{r:.2f}' for r in per_round)})", "",
              "Worker processes at the end of the run (models preloaded before the fork):", "",
              "| worker | process | models | VmRSS MB | PSS MB | anonymous MB | shared MB |",
              "|---|---|---|---:|---:|---:|---:|"]
    for m in memory:
        lines.append(f"| {m['worker']} | {m['role']} (pid {m['pid']}) | {m['models']} | "
                     f"{m['rss_mb']:.1f} | {m['pss_mb']:.1f} | {m['anon_mb']:.1f} | "
                     f"{m['shared_mb']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s + 8 s")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--hidden", default="2048,2048,2048",
                    help="the MLP's hidden layer sizes (its cost per row)")
    ap.add_argument("--blas-threads", type=int, default=1)
    ap.add_argument("--log-level", default="WARNING", help="the workers' PREDQ_LOG_LEVEL")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 2.0, 8.0
    hidden = tuple(int(h) for h in args.hidden.split(","))

    tmp = Path(tempfile.mkdtemp(prefix="predq-scale-"))
    model_file = tmp / "mlp.joblib"
    log("scale", f"training Pipeline(StandardScaler, MLPClassifier({hidden}))")
    model = train_model(model_file, hidden)
    bodies = tmp / "bodies.json"
    doc = make_bodies(model, args.rows)
    bodies.write_bytes(orjson.dumps(doc))
    threads = str(args.blas_threads)
    blas = {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads}
    queues = {m: q for v in VARIANTS.values() for m, q in v["models"].items()}
    stack = Stack(tmp, queues, env={"PREDQ_LOG_LEVEL": args.log_level}, tag="scale")
    try:
        for model_name in queues:
            stack.push(model_file, model_name, "sklearn")
        stack.start_api()
        for v in VARIANTS.values():
            for w, qs in v["workers"].items():
                stack.start_worker(w, qs, concurrency=1, env=blas)
        stack.wait_ready(list(queues), orjson.dumps(doc["bodies"][0]))
        log("scale", f"API at {stack.url}, workers {list(stack.workers)} ready")
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in VARIANTS}
        batches: dict[str, list[dict[str, int]]] = {k: [] for k in VARIANTS}
        order = list(VARIANTS)
        for i in range(args.rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                v = VARIANTS[name]
                before = stack.batch_counters()
                res = run_load("predict", stack.url, tmp / f"load-{i}-{name}.json",
                               models=list(v["models"]), bodies=bodies,
                               groups=stack.group(*v["workers"]), clients=args.clients,
                               rows=args.rows, warmup=args.warmup, duration=args.duration)
                after = stack.batch_counters()
                batches[name].append({k: after.get(k, 0) - before.get(k, 0)
                                      for k in ("jobs", "batches")})
                log("scale", f"round {i + 1} {name}: {res['rate']:.1f} req/s, p50 "
                    f"{res['latency_ms']['p50']} ms, errors {res['errors']} "
                    f"{res['error_samples'][:1]}")
                results[name].append(res)
        summary = {k: summarize(results[k], batches[k], set(VARIANTS[k]["workers"]))
                   for k in VARIANTS}
        memory = []
        for v in VARIANTS.values():
            for w in v["workers"]:
                child = stack.workers[w]
                served = ", ".join(m for m, q in v["models"].items() if q in v["workers"][w])
                for pid in sorted(child.group_pids()):
                    role = "consumer" if pid == child.pid else "pool process"
                    memory.append({"worker": w, "pid": pid, "role": role, "models": served,
                                   **memory_of(pid)})
        meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "model": f"Pipeline(StandardScaler, MLPClassifier{hidden})",
                "blas_threads": args.blas_threads, "clients": args.clients,
                "rows": args.rows, "rounds": args.rounds, "duration": args.duration,
                "cpus": os.cpu_count(),
                "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg())}
        print(render(summary, memory, meta))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps({"meta": meta, "summary": summary,
                                           "memory": memory}, option=orjson.OPT_INDENT_2))
        log("scale", f"results in {args.out}")
    finally:
        stack.close()
        if args.keep:
            log("scale", f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
