"""predq ``/predict`` of two source trees, side by side in one run (issue 9's before/after).

    git worktree add /work/wt/before a180734^      # the tree before issue 9's module moves
    (cd /work/wt/before && ./scripts/test --co -q)  # gives it its own .venv
    .venv/bin/python -m bench.revisions --before /work/wt/before      # after: this tree

Each tree runs its own stack from its own ``.venv``: the model is pushed with that tree's
``predq models push`` (runtime auto: treelite), then ``predq up`` starts that tree's Redis
(its own ``redis-server`` on a free port), API, worker and Flower, exactly as
``bench.peers`` runs predq (auth on with one API key, ``PREDQ_RATE_LIMIT=1000000/second``).
Every command runs in a temporary directory, so ``python -m predq`` imports the tree's
installed code, not whatever checkout is the working directory. Both stacks stay up; the
load (``bench.load`` of *this* tree: 32 clients, 10-row ``POST /predict``, every reply
checked against the local ``predict_proba`` / ``predict``; the RandomForest(100) on
breast_cancer of ``bench.peers``) alternates between them round by round. CPU per request
is read from /proc for every process of each stack (supervisor, API, worker and its pool,
Flower, Redis) over the measured window. It prints req/s, latency, CPU ms per request by
process, and the ratios after/before. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.harness import ROOT, log, run_load
from bench.peers import MODEL_NAME, make_bodies, predq_groups, stop, train_model


def git_describe(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip()[:72] or str(tree)


class TreeStack:
    """``predq up`` of one source tree, from that tree's ``.venv``."""

    def __init__(self, label: str, tree: Path, tmp: Path, model_file: Path, key: str,
                 key_json: str) -> None:
        from predq.procs import wait_for_url
        from predq.redis_server import RedisServer, free_port

        self.label = label
        self.py = tree / ".venv" / "bin" / "python"
        if not self.py.exists():
            raise SystemExit(f"{self.py} is missing: run ./scripts/test --co -q in {tree}")
        self.tmp = tmp
        tmp.mkdir(parents=True)
        self.redis = RedisServer(dir=tmp / "redis").start()
        try:
            self._start(tree, model_file, key, key_json, free_port, wait_for_url)
        except BaseException:
            self.redis.stop()
            raise

    def _start(self, tree: Path, model_file: Path, key: str, key_json: str,
               free_port: Any, wait_for_url: Any) -> None:
        label, tmp = self.label, self.tmp
        self.env = {
            **os.environ, "PYTHONPATH": "",
            # Each stack its own home: ``predq up`` refuses to start beside another one.
            "PREDQ_HOME": str(tmp / "home"),
            "PREDQ_REDIS_URL": self.redis.url,
            "PREDQ_REGISTRY_ROOT": str(tmp / "registry"),
            "PREDQ_API_KEYS": key_json, "PREDQ_AUTH_ENABLED": "true",
            "PREDQ_RATE_LIMIT": "1000000/second",
        }
        push = subprocess.run([str(self.py), "-m", "predq", "models", "push", str(model_file),
                               "--name", MODEL_NAME], cwd=tmp, env=self.env,
                              capture_output=True, text=True, timeout=300)
        if push.returncode:
            raise SystemExit(f"{label}: push failed:\n{push.stdout}\n{push.stderr}")
        log("revisions", f"{label}: {push.stdout.strip().splitlines()[-1]}")
        port, flower_port = free_port(), free_port()
        self.out = open(tmp / "predq-up.log", "wb")  # noqa: SIM115 (closed by close)
        self.proc = subprocess.Popen(
            [str(self.py), "-m", "predq", "up", "--no-demo", "--port", str(port),
             "--flower-port", str(flower_port)],
            cwd=tmp, env=self.env, stdout=self.out, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {key}"}
        wait_for_url(f"{self.url}/healthz", timeout=120)
        wait_for_url(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=120)
        self.groups: dict[str, int] = {}

    def close(self) -> None:
        stop(self.proc)
        self.out.close()
        self.redis.stop()


def wait_served(stack: TreeStack, body: bytes, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=stack.url, trust_env=False, timeout=30,
                      headers=stack.headers) as h:
        while True:  # bounded by the deadline
            r = h.post(f"/v1/models/{MODEL_NAME}/predict?wait=10", content=body,
                       headers={"Content-Type": "application/json"})
            if r.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stack.label}: {r.status_code} {r.text[:300]}")
            time.sleep(0.5)


def per_job(result: dict[str, Any], names: list[str]) -> dict[str, float]:
    done = max(1, result["completed"])
    usage = result.get("cpu_s", {})
    out = {n: usage.get(n, {}).get("total", 0.0) * 1000 / done for n in names}
    w = usage.get("worker", {})
    out["worker.consumer"] = w.get("leader", 0.0) * 1000 / done
    out["worker.pool"] = w.get("others", 0.0) * 1000 / done
    out["total"] = sum(out[n] for n in names)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.revisions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="the older source tree")
    ap.add_argument("--after", type=Path, default=ROOT, help="the newer one [this tree]")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s + 8 s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--mode", choices=["predict", "jobs"], default="predict",
                    help="POST /predict, or POST /jobs + GET ?wait=")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "revisions.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 2.0, 8.0
    from predq.api.security.apikeys import key_spec, new_key

    tmp = Path(tempfile.mkdtemp(prefix="predq-revisions-"))
    model_file = tmp / "cancer.joblib"
    model = train_model(model_file)
    bodies = tmp / "bodies.json"
    doc = make_bodies(model, args.rows)
    bodies.write_bytes(orjson.dumps(doc))
    key = new_key()
    key_json = json.dumps([key_spec("bench", key).model_dump(mode="json")])
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    stacks: dict[str, TreeStack] = {}
    try:
        for label, tree in trees.items():
            stacks[label] = TreeStack(label, tree, tmp / label, model_file, key, key_json)
        for s in stacks.values():
            wait_served(s, orjson.dumps(doc["bodies"][0]))
            s.groups = predq_groups(s.proc.pid, s.redis.pid or 0)
            log("revisions", f"{s.label} ({git_describe(trees[s.label])}) at {s.url}, "
                f"groups {s.groups}")
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in stacks}
        for i in range(args.rounds):
            for label in (["before", "after"] if i % 2 == 0 else ["after", "before"]):
                s = stacks[label]
                res = run_load(args.mode, s.url, tmp / f"load-{i}-{label}.json",
                               models=[MODEL_NAME], bodies=bodies, groups=s.groups,
                               clients=args.clients, rows=args.rows, warmup=args.warmup,
                               duration=args.duration, headers=s.headers)
                log("revisions", f"round {i + 1} {label}: {res['rate']:.0f} req/s, p50 "
                    f"{res['latency_ms']['p50']} ms, errors {res['errors']} "
                    f"{res['error_samples'][:1]}")
                results[label].append(res)
        med = statistics.median
        summary: dict[str, Any] = {}
        for label, rs in results.items():
            names = list(stacks[label].groups)
            cpus = [per_job(r, names) for r in rs]
            summary[label] = {
                "rate": med(r["rate"] for r in rs), "rates": [r["rate"] for r in rs],
                "p50_ms": med(r["latency_ms"]["p50"] or 0 for r in rs),
                "p99_ms": med(r["latency_ms"]["p99"] or 0 for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "cpu_ms_per_job": {k: med(c[k] for c in cpus) for k in cpus[0]},
            }
        meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "trees": {k: git_describe(v) for k, v in trees.items()},
                "clients": args.clients, "rows": args.rows, "rounds": args.rounds,
                "duration": args.duration, "mode": args.mode,
                "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg())}
        path = "POST /predict" if args.mode == "predict" else "POST /jobs + GET ?wait="
        lines = [f"predq {path}, two source trees, {meta['when']}: {args.clients} clients, "
                 f"{args.rows}-row requests, {args.rounds} round(s) x {args.duration} s, "
                 f"RandomForest(100) on breast_cancer (runtime auto); load average "
                 f"{meta['loadavg']}", ""]
        for label in stacks:
            lines.append(f"- {label}: {meta['trees'][label]} ({trees[label]})")
        lines += ["", "| tree | req/s | per round | p50 ms | p99 ms | CPU ms/req | errors |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for label, s in summary.items():
            lines.append(f"| {label} | {s['rate']:.0f} | "
                         f"{', '.join(f'{x:.0f}' for x in s['rates'])} | {s['p50_ms']:.1f} | "
                         f"{s['p99_ms']:.1f} | {s['cpu_ms_per_job']['total']:.2f} | "
                         f"{s['errors']} |")
        lines += ["", "CPU ms per completed request, by process:", ""]
        for label, s in summary.items():
            parts = ", ".join(f"{k} {v:.2f}" for k, v in s["cpu_ms_per_job"].items()
                              if k != "total")
            lines.append(f"- {label}: {parts} (total {s['cpu_ms_per_job']['total']:.2f})")
        b, a = summary["before"], summary["after"]
        rounds = [y / x if x else 0.0 for x, y in zip(b["rates"], a["rates"], strict=True)]
        cpu_ratio = (a["cpu_ms_per_job"]["total"] / b["cpu_ms_per_job"]["total"]
                     if b["cpu_ms_per_job"]["total"] else 0.0)
        lines += ["", f"after/before req/s: {a['rate'] / b['rate'] if b['rate'] else 0:.2f} "
                  f"(per round: {', '.join(f'{r:.2f}' for r in rounds)}); "
                  f"after/before CPU ms/req: {cpu_ratio:.2f}"]
        print("\n".join(lines))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps({"meta": meta, "summary": summary},
                                          option=orjson.OPT_INDENT_2))
        log("revisions", f"results in {args.out}")
    finally:
        for s in stacks.values():
            s.close()
        if args.keep:
            log("revisions", f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
