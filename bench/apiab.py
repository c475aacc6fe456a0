"""A/B of the API's cost: two checkouts of predq side by side, the same load, one run.

    .venv/bin/python -m bench.apiab --base /work/wt/base/.venv/bin/python [--new PY] [--rounds 2]

Starts ``predq up`` (auth on, one API key, the rate limiter on with a limit the clients never
reach, as ``bench.peers`` runs it) once with each interpreter: ``--base`` (another checkout's
venv) and this one's. Both stacks stay up; the phases alternate A, B, B, A... round by round,
seconds apart: ``POST /predict`` and ``POST /jobs`` + ``GET ?wait=``, 32 closed-loop clients,
10-row requests on the breast_cancer forest of ``bench.peers``, every reply checked. It prints
req/s and CPU ms per completed request of each process group (api, worker, flower, redis,
supervisor), medians over the rounds, and the ratio B/A. ``--profile DIR`` runs py-spy on the
API during each phase (summarize with ``python -m bench.flame DIR/*.txt``).
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

from bench.peers import (
    MODEL_NAME,
    make_bodies,
    predq_groups,
    run_load,
    stop,
    train_model,
)
from predq.push import push_model

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[apiab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start(python: str, tmp: Path, model_file: Path, log_level: str, extra_env: dict[str, str]
          ) -> tuple[subprocess.Popen[bytes], Any, str, dict[str, str]]:
    from predq.api.security.apikeys import key_spec, new_key
    from predq.procs import wait_for_url
    from predq.redis_server import RedisServer, free_port
    from predq.shared.registry.store import Registry

    tmp.mkdir(parents=True, exist_ok=True)
    registry = Registry(tmp / "registry")
    push_model(registry, model_file, MODEL_NAME, runtime="auto")
    redis = RedisServer(dir=tmp / "redis").start()
    key = new_key()
    port, flower_port = free_port(), free_port()
    env = {**os.environ, "PREDQ_REDIS_URL": redis.url,
           "PREDQ_REGISTRY_ROOT": str(registry.root),
           "PREDQ_API_KEYS": json.dumps([key_spec("bench", key).model_dump(mode="json")]),
           "PREDQ_AUTH_ENABLED": "true", "PREDQ_RATE_LIMIT": "1000000/second",
           "PREDQ_LOG_LEVEL": log_level, "PREDQ_HOME": str(tmp / "home"), **extra_env}
    out = open(tmp / "predq-up.log", "wb")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [python, "-m", "predq", "up", "--no-demo", "--port", str(port),
         "--flower-port", str(flower_port)],
        cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{url}/healthz", timeout=120)
        wait_for_url(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=120)
    except TimeoutError:
        stop(proc)
        redis.stop()
        print((tmp / "predq-up.log").read_text()[-3000:], file=sys.stderr)
        raise
    return proc, redis, url, {"Authorization": f"Bearer {key}"}


def spy(pgid: int, out: Path, warmup: float, duration: float) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cmd = ["sh", "-c", f"sleep {warmup}; exec {exe} record --pid {pgid} --subprocesses "
           f"--format raw --rate 200 --nonblocking --duration {int(duration)} -o {out}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.apiab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the python of the baseline checkout's venv")
    ap.add_argument("--new", default=sys.executable,
                    help="the python of the checkout to compare (default: this one)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--only", choices=["both", "base", "new"], default="both")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="predq-apiab-"))
    model_file = tmp / "cancer.joblib"
    bodies = tmp / "bodies.json"
    bodies.write_bytes(orjson.dumps(make_bodies(train_model(model_file), args.rows)))
    variants = {"base": args.base, "new": args.new}
    if args.only != "both":
        variants = {args.only: variants[args.only]}
    stacks: dict[str, tuple[Any, ...]] = {}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for name, python in variants.items():
            proc, redis, url, headers = start(python, tmp / name, model_file, args.log_level, {})
            groups = predq_groups(proc.pid, redis.pid)
            stacks[name] = (proc, redis, url, headers, groups)
            log(f"{name}: {python} at {url}")
        names = list(stacks)
        for i in range(args.rounds):
            order = names if i % 2 == 0 else names[::-1]
            for mode in ("predict", "jobs"):
                for name in order:
                    _, _, url, headers, groups = stacks[name]
                    spies = []
                    if args.profile:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        spies.append(spy(groups["api"], args.profile / f"{i}-{mode}-{name}.txt",
                                         args.warmup, args.duration))
                    res = run_load(mode, url, tmp / f"{i}-{mode}-{name}.json", service="predq",
                                   bodies=bodies, headers=headers, groups=groups, args=args)
                    for s in spies:
                        s.wait(60)
                    results.setdefault((mode, name), []).append(res)
                    cpu = res["cpu_s"].get("api", {}).get("total", 0) * 1000 / max(
                        1, res["completed"])
                    log(f"round {i + 1} {mode} {name}: {res['rate']:.0f} req/s, api "
                        f"{cpu:.2f} ms/req, errors {res['errors']} {res['error_samples'][:1]}")
        print(render(results, list(stacks), args))
    finally:
        for proc, redis, *_ in stacks.values():
            stop(proc)
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def render(results: dict[tuple[str, str], list[dict[str, Any]]], names: list[str],
           args: argparse.Namespace) -> str:
    procs = ["api", "worker", "flower", "redis", "supervisor"]
    lines = [f"bench.apiab, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{args.clients} clients, {args.rows}-row requests, {args.rounds} round(s) x "
             f"{args.duration} s, load average "
             + " ".join(f"{x:.1f}" for x in os.getloadavg()), "",
             "| phase | variant | req/s | p50 ms | " + " | ".join(
                 f"{p} ms/req" for p in procs) + " | total | errors |",
             "|---|---|---:|---:|" + "---:|" * (len(procs) + 2)]
    for mode in ("predict", "jobs"):
        for name in names:
            rs = results.get((mode, name), [])
            if not rs:
                continue
            rate = statistics.median(r["rate"] for r in rs)
            p50 = statistics.median(r["latency_ms"]["p50"] or 0 for r in rs)
            per = {p: statistics.median(r["cpu_s"].get(p, {}).get("total", 0) * 1000
                                        / max(1, r["completed"]) for r in rs) for p in procs}
            lines.append(f"| {mode} | {name} | {rate:.0f} | {p50:.1f} | " + " | ".join(
                f"{per[p]:.2f}" for p in procs) + f" | {sum(per.values()):.2f} | "
                f"{sum(r['errors'] for r in rs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
