"""predq against BentoML on the same machine, the same model file and the same load.

    .venv/bin/python -m bench.peers            # 2 rounds of 5 s warm-up + 20 s per phase
    .venv/bin/python -m bench.peers --quick    # 1 round of 2 s + 8 s (a smoke test)

The first run builds ``bench/.peers-venv`` (gitignored): BentoML 1.4.40 with predq's own
scikit-learn, numpy, scipy, pandas and joblib versions, so both services load the same model
file with the same library. Then, all on 127.0.0.1:

- the model: RandomForestClassifier(100) on scikit-learn's breast_cancer (30 features), one
  joblib file; predq registers it with ``predq models push`` semantics (runtime chosen and
  verified at push: ``--predq-runtime``), BentoML loads the same file;
- predq as ``predq up`` runs it (its own Redis, API, worker and Flower; auth on, one API
  key, the rate limiter on with a limit the 32 clients never reach);
- BentoML: ``bench/bento_service.py``, ``@bentoml.api(batchable=True)`` on ``list[record]``;
- the load generator (``bench/load.py``, its own process): 32 closed-loop clients, 10-row
  requests, every reply checked against a local ``predict_proba`` (labels equal,
  probabilities within 1e-9; a wrong reply counts as an error). Phases, one after the other,
  rotated each round: predq ``POST /predict``, predq ``POST /jobs`` + ``GET ?wait=``,
  BentoML ``POST /predict``; then idle latency (one client, sequential 10-row calls);
- CPU per completed request from ``/proc/<pid>/stat`` of every process of each service,
  over the measured window only (predq: up's supervisor, API, worker incl. its pool,
  Flower, Redis; BentoML: every process of its group).

It prints the table, the ratios against the targets of the issue, and writes everything to
``bench/results/peers.json``.
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
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from predq.push import push_model

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / "bench" / ".peers-venv"
BENTOML_PIN = "bentoml==1.4.40"
RESULTS = ROOT / "bench" / "results"
MODEL_NAME = "cancer"

TARGETS = {
    "predict_vs_bento": 1.2,  # predq /predict req/s >= 1.2x BentoML (1 worker)
    "async_vs_bento": 1.0,  # submit + long-poll >= 1.0x
    "idle_p50_delta_ms": 1.0,  # predq idle p50 within 1 ms of BentoML's
    "cpu_ms_per_job": 2.5,  # all predq processes together
}


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the peer's environment ------------------------------------------------------------------


def peer_pins() -> list[str]:
    pins = [BENTOML_PIN]
    for dist in ("scikit-learn", "numpy", "scipy", "pandas", "joblib"):
        pins.append(f"{dist}=={version(dist)}")
    return pins


def ensure_peer_venv(venv: Path = PEER_VENV) -> Path:
    """The peer venv's python, built (or rebuilt when the pins changed) on first use."""
    marker = venv / "predq-peers.json"
    pins = peer_pins()
    py = venv / "bin" / "python"
    if marker.is_file() and py.exists() and json.loads(marker.read_text()) == pins:
        return py
    log(f"building {venv} with {' '.join(pins)} (first run only; a few minutes)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *pins], check=True)
    marker.write_text(json.dumps(pins))
    return py


# -- the model and the request bodies --------------------------------------------------------


def train_model(path: Path) -> Any:
    """RandomForestClassifier(100) on breast_cancer, fitted on named columns."""
    import joblib
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    data = load_breast_cancer(as_frame=True)
    x = data.data.rename(columns=lambda c: c.replace(" ", "_"))
    y = np.asarray(data.target_names)[data.target]
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)
    joblib.dump(model, path)
    return model


def make_bodies(model: Any, rows: int, n: int = 64, seed: int = 0) -> dict[str, Any]:
    """``n`` request bodies of ``rows`` rows (dataset rows, jittered) and their expected
    outputs from the local ``predict_proba`` / ``predict``."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).data
    data.columns = list(model.feature_names_in_)
    rng = np.random.default_rng(seed)
    bodies, expected = [], []
    std = data.std().to_numpy()
    keys = [str(c) for c in model.classes_.tolist()]
    for _ in range(n):
        pick = data.iloc[rng.integers(0, len(data), rows)].to_numpy()
        values = np.round(pick + rng.normal(0, 0.05, pick.shape) * std, 6)
        frame = pd.DataFrame(values, columns=data.columns)
        proba = model.predict_proba(frame)
        labels = model.predict(frame).tolist()
        bodies.append({"inputs": frame.to_dict(orient="records")})
        expected.append([{"label": lab, "probabilities": dict(zip(keys, p, strict=True))}
                         for lab, p in zip(labels, proba.tolist(), strict=True)])
    return {"bodies": bodies, "expected": expected}


# -- processes -------------------------------------------------------------------------------


def _proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def predq_groups(up_pid: int, redis_pid: int) -> dict[str, int]:
    """Process groups of a running ``predq up``: its supervisor and each child, and Redis."""
    from predq.procs import child_pids

    groups = {"supervisor": up_pid, "redis": redis_pid}
    for pid in child_pids(up_pid):
        words = _proc_name(pid).split()
        for name in ("api", "worker", "flower"):
            if name in words[:4]:  # python -m predq <name> ...
                groups.setdefault(name, os.getpgid(pid))
    return groups


def tree_groups(pid: int, name: str) -> dict[str, int]:
    """Every process group among ``pid`` and its descendants, named name, name.1, ..."""
    from predq.procs import child_pids

    pgids: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            g = os.getpgid(p)
        except ProcessLookupError:
            continue
        if g not in pgids:
            pgids.append(g)
        todo += child_pids(p)
    return {name if i == 0 else f"{name}.{i}": g for i, g in enumerate(pgids)}


def start_predq(tmp: Path, model_file: Path, runtime: str, log_level: str
                ) -> tuple[subprocess.Popen[bytes], Any, str, dict[str, str], Any]:
    from predq.api.security.apikeys import key_spec, new_key
    from predq.procs import wait_for_url
    from predq.redis_server import (
        RedisServer,  # noqa: I001
        free_port,
    )
    from predq.shared.registry.store import Registry

    registry = Registry(tmp / "registry")
    manifest = push_model(registry, model_file, MODEL_NAME, runtime=runtime)
    log(f"predq: {MODEL_NAME} v{manifest.version} runtime {manifest.runtime.summary()}")
    redis = RedisServer(dir=tmp / "redis").start()
    key = new_key()
    port, flower_port = free_port(), free_port()
    env = {
        **os.environ,
        "PREDQ_REDIS_URL": redis.url,
        "PREDQ_REGISTRY_ROOT": str(registry.root),
        "PREDQ_API_KEYS": json.dumps([key_spec("bench", key).model_dump(mode="json")]),
        "PREDQ_AUTH_ENABLED": "true",
        # The 32 clients share 127.0.0.1: a limit they never reach, the limiter still runs.
        "PREDQ_RATE_LIMIT": "1000000/second",
        "PREDQ_LOG_LEVEL": log_level,
    }
    out = open(tmp / "predq-up.log", "wb")  # noqa: SIM115 (closed by stop)
    proc = subprocess.Popen(
        [sys.executable, "-m", "predq", "up", "--no-demo", "--port", str(port),
         "--flower-port", str(flower_port)],
        cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_url(f"{url}/healthz", timeout=120)
    wait_for_url(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=120)
    return proc, redis, url, {"Authorization": f"Bearer {key}"}, out


def start_bento(tmp: Path, py: Path, model_file: Path, workers: int
                ) -> tuple[subprocess.Popen[bytes], str, Any]:
    from predq.procs import wait_for_url
    from predq.redis_server import free_port

    port = free_port()
    env = {**os.environ, "BENCH_MODEL": str(model_file), "BENCH_WORKERS": str(workers),
           "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp / "bentoml"),
           "PYTHONPATH": ""}
    out = open(tmp / "bentoml.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(py), "-m", "bentoml", "serve", "bento_service:Cancer", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT / "bench", env=env, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_url(f"{url}/readyz", timeout=180)
    return proc, url, out


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after ``timeout``."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# -- phases ----------------------------------------------------------------------------------


def run_load(mode: str, url: str, out: Path, *, service: str, bodies: Path,
             headers: dict[str, str], groups: dict[str, int], args: argparse.Namespace,
             extra: list[str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.load", mode, "--url", url, "--out", str(out),
           "--model", MODEL_NAME, "--service", service, "--bodies", str(bodies),
           "--clients", str(args.clients), "--rows", str(args.rows),
           "--warmup", str(args.warmup), "--duration", str(args.duration)]
    for k, v in headers.items():
        cmd += ["--header", f"{k}: {v}"]
    for name, pgid in groups.items():
        cmd += ["--watch", f"{name}={pgid}"]
    cmd += extra or []
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=args.warmup + args.duration + 300)
    return orjson.loads(out.read_bytes())


def profile(args: argparse.Namespace, groups: dict[str, int], tag: str
            ) -> list[subprocess.Popen[bytes]]:
    """py-spy record of the API's and the worker's processes over the measured window."""
    args.profile.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for name in ("api", "worker"):
        if name not in groups:
            continue
        out = args.profile / f"{tag}.{name}.txt"
        cmd = ["sh", "-c", f"sleep {args.warmup}; exec {spy} record --pid {groups[name]} "
               f"--subprocesses --format raw --rate 200 --nonblocking "
               f"--duration {int(args.duration)} -o {out}"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    return procs


def cpu_ms_per_job(result: dict[str, Any], names: list[str]) -> dict[str, float]:
    done = max(1, result["completed"])
    usage = result.get("cpu_s", {})
    per = {n: usage.get(n, {}).get("total", 0.0) * 1000 / done for n in names}
    per["total"] = sum(per.values())
    return per


def summarize(rounds: dict[str, list[dict[str, Any]]], idle: dict[str, list[float]],
              groups: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase, results in rounds.items():
        names = groups[phase]
        rates = [r["rate"] for r in results]
        cpus = [cpu_ms_per_job(r, names) for r in results]
        out[phase] = {
            "rate": statistics.median(rates), "rates": rates,
            "p50_ms": statistics.median(r["latency_ms"]["p50"] or 0 for r in results),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] or 0 for r in results),
            "errors": sum(r["errors"] for r in results),
            "error_samples": [e for r in results for e in r["error_samples"]][:5],
            "cpu_ms_per_job": {n: statistics.median(c[n] for c in cpus)
                               for n in [*names, "total"]},
            "idle_p50_ms": statistics.median(idle[phase]) if idle.get(phase) else None,
        }
    return out


def render(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    p, a, b = summary["predq /predict"], summary["predq /jobs + GET ?wait"], summary["bentoml"]
    lines = [
        f"predq vs BentoML 1.4.40, {meta['when']}, {meta['clients']} clients, "
        f"{meta['rows']}-row requests, {meta['rounds']} round(s) x {meta['duration']} s, "
        f"predq runtime: {meta['runtime']}; load average {meta['loadavg']}",
        "",
        "| service | req/s | p50 ms | p99 ms | idle p50 ms | CPU ms/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in (("predq `POST /predict`", p), ("predq `POST /jobs` + `GET ?wait=`", a),
                    ("BentoML `batchable=True`, 1 worker", b)):
        idle = "" if s["idle_p50_ms"] is None else f"{s['idle_p50_ms']:.1f}"
        lines.append(f"| {name} | {s['rate']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                     f"{idle} | {s['cpu_ms_per_job']['total']:.2f} | {s['errors']} |")
    lines += ["", "CPU ms per completed request, by process:", ""]
    for name, s in (("predq /predict", p), ("predq async", a), ("bentoml", b)):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in s["cpu_ms_per_job"].items() if k != "total")
        lines.append(f"- {name}: {parts} (total {s['cpu_ms_per_job']['total']:.2f})")
    r_pred = p["rate"] / b["rate"] if b["rate"] else 0.0
    r_async = a["rate"] / b["rate"] if b["rate"] else 0.0
    idle_delta = ((p["idle_p50_ms"] or 0) - (b["idle_p50_ms"] or 0))
    cpu = p["cpu_ms_per_job"]["total"]

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines += [
        "",
        "| target | measured | |",
        "|---|---:|---|",
        f"| predq /predict >= {TARGETS['predict_vs_bento']}x BentoML | {r_pred:.2f}x | "
        f"{mark(r_pred >= TARGETS['predict_vs_bento'])} |",
        f"| async (submit + long-poll) >= {TARGETS['async_vs_bento']}x BentoML | "
        f"{r_async:.2f}x | {mark(r_async >= TARGETS['async_vs_bento'])} |",
        f"| idle /predict p50 within {TARGETS['idle_p50_delta_ms']} ms of BentoML's | "
        f"{idle_delta:+.1f} ms | {mark(idle_delta <= TARGETS['idle_p50_delta_ms'])} |",
        f"| CPU per 10-row job, all predq processes <= {TARGETS['cpu_ms_per_job']} ms | "
        f"{cpu:.2f} ms | {mark(cpu <= TARGETS['cpu_ms_per_job'])} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s + 8 s")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--idle-count", type=int, default=200)
    ap.add_argument("--predq-runtime", choices=["auto", "sklearn", "treelite"], default="auto")
    ap.add_argument("--bento-workers", type=int, default=1)
    ap.add_argument("--log-level", default="INFO", help="predq's PREDQ_LOG_LEVEL")
    ap.add_argument("--build-only", action="store_true", help="build the peer venv and stop")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy the API and the worker during the predq phases (raw files "
                         "in DIR; summarize with python -m bench.flame)")
    ap.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration, args.idle_count = 1, 2.0, 8.0, 60
    py = ensure_peer_venv()
    if args.build_only:
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="predq-peers-"))
    model_file = tmp / "cancer.joblib"
    model = train_model(model_file)
    bodies = tmp / "bodies.json"
    bodies.write_bytes(orjson.dumps(make_bodies(model, args.rows)))
    started: list[Any] = []
    try:
        up, redis, purl, headers, f1 = start_predq(tmp, model_file, args.predq_runtime,
                                                   args.log_level)
        started += [up, f1]
        bento, burl, f2 = start_bento(tmp, py, model_file, args.bento_workers)
        started += [bento, f2]
        pg = predq_groups(up.pid, redis.pid)
        log(f"predq at {purl} (groups {pg}), BentoML at {burl}")
        phases = {
            "predq /predict": ("predict", purl, "predq", headers, pg),
            "predq /jobs + GET ?wait": ("jobs", purl, "predq", headers, pg),
            "bentoml": ("predict", burl, "bento", {}, tree_groups(bento.pid, "bentoml")),
        }
        # Idle first: BentoML's dispatcher, once fitted under overload, holds a lone
        # request for hundreds of ms, so an idle measurement after the load says nothing.
        idle: dict[str, list[float]] = {k: [] for k in phases}
        for i in range(max(1, args.rounds)):
            for name, url, service, hdr in (("predq /predict", purl, "predq", headers),
                                            ("bentoml", burl, "bento", {})):
                res = run_load("seq", url, tmp / f"seq-{i}-{service}.json", service=service,
                               bodies=bodies, headers=hdr, groups={}, args=args,
                               extra=["--count", str(args.idle_count), "--rows-list",
                                      str(args.rows)])
                stats = res["by_rows"][str(args.rows)][MODEL_NAME]
                idle[name].append(stats["latency_ms"]["p50"] or 0.0)
                log(f"idle {name}: p50 {stats['latency_ms']['p50']} ms, "
                    f"errors {stats['errors']}")
        rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in phases}
        order = list(phases)
        for i in range(args.rounds):
            for name in order[i % 3:] + order[:i % 3]:
                mode, url, service, hdr, groups = phases[name]
                log(f"round {i + 1}: {name}")
                spies = (profile(args, groups, f"{i}-{mode}-{service}")
                         if args.profile and service == "predq" else [])
                res = run_load(mode, url, tmp / f"load-{i}-{mode}-{service}.json",
                               service=service, bodies=bodies, headers=hdr, groups=groups,
                               args=args)
                log(f"  {res['rate']:.0f} req/s, p50 {res['latency_ms']['p50']} ms, "
                    f"errors {res['errors']} {res['error_samples'][:1]}")
                rounds[name].append(res)
                for spy in spies:
                    spy.wait(60)
        idle["predq /jobs + GET ?wait"] = []
        groups_by_phase = {k: list(v[4]) for k, v in phases.items()}
        summary = summarize(rounds, idle, groups_by_phase)
        meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "clients": args.clients, "rows": args.rows, "rounds": args.rounds,
                "duration": args.duration, "runtime": args.predq_runtime,
                "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg())}
        text = render(summary, meta)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps({"meta": meta, "summary": summary, "rounds": rounds},
                                          option=orjson.OPT_INDENT_2))
        log(f"results in {args.out}")
    finally:
        for p in started:
            if isinstance(p, subprocess.Popen):
                stop(p)
            else:
                p.close()
        if "redis" in locals():
            redis.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
