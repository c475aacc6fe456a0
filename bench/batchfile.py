"""Batch files benchmark (issue 12): a big file end to end vs a local script, side by side.

    .venv/bin/python -m bench.batchfile                 # 1,000,000 rows (a few minutes)
    .venv/bin/python -m bench.batchfile --rows 200000   # shorter

It starts its own redis-server, the API and two workers (``python -m predq worker``, default
concurrency) on this machine, registers a RandomForest(100) over 30 numeric features, writes
one CSV and one Parquet file of ``--rows`` rows (an id column + 30 features), and prints for
each format:

- ``predq``: upload (streamed), create the batch, wait for it, download the output;
- ``local``: ``pandas.read_csv`` (or ``read_parquet``), one ``predict_proba`` and
  ``DataFrame.to_csv`` (``to_parquet``) of the same file with the same model;
- their ratio (target <= 1.5x), and the API's and each worker's peak RSS (VmHWM).

Then the idle ``/predict`` p50 (one client, 1 row, sequential) without a batch and while a
batch runs (target: within 2x). Nothing asserts a time; the machine may be shared, so read
the numbers as noisy.
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

import httpx

if __package__ in (None, ""):  # ``python bench/batchfile.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from predq.procs import Child, Supervisor, wait_for_url  # noqa: E402
from predq.push import push_model
from predq.redis_server import RedisServer, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 30
MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def log(msg: str) -> None:
    print(f"[batchfile {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb(child: Child) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in child.group_pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return out


def make_data(tmp: Path, rows: int) -> tuple[Path, Path, Path, list[str]]:
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    names = [f"f{i:02d}" for i in range(N_FEATURES)]
    x, y = make_classification(n_samples=20_000, n_features=N_FEATURES, random_state=0)
    model = RandomForestClassifier(n_estimators=100, random_state=0)
    model.fit(pd.DataFrame(x, columns=names), y)
    artifact = tmp / "forest.joblib"
    joblib.dump(model, artifact)
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(rows, N_FEATURES)).round(6), columns=names)
    df.insert(0, "id", np.arange(rows))
    csv, parquet = tmp / "input.csv", tmp / "input.parquet"
    df.to_csv(csv, index=False)
    df.to_parquet(parquet, row_group_size=50_000)
    return artifact, csv, parquet, names


def local_script(artifact: Path, src: Path, fmt: str, out: Path) -> float:
    """What a user would run by hand: read, one predict_proba, write."""
    import joblib
    import pandas as pd

    model = joblib.load(artifact)
    t0 = time.perf_counter()
    df = pd.read_csv(src) if fmt == "csv" else pd.read_parquet(src)
    proba = model.predict_proba(df.drop(columns=["id"]))
    res = pd.DataFrame({"id": df["id"], "label": model.classes_.take(proba.argmax(axis=1))})
    for j, c in enumerate(model.classes_):
        res[f"proba_{c}"] = proba[:, j]
    if fmt == "csv":
        res.to_csv(out, index=False)
    else:
        res.to_parquet(out)
    return time.perf_counter() - t0


def end_to_end(client: httpx.Client, src: Path, fmt: str, out: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()

    def body() -> Any:
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    r = client.post("/v1/files", content=body(), headers={"Content-Type": MEDIA[fmt]})
    r.raise_for_status()
    t_up = time.perf_counter() - t0
    r = client.post("/v1/models/forest/batches", json={"file_id": r.json()["id"],
                                                       "id_column": "id"})
    r.raise_for_status()
    bid = r.json()["id"]
    while True:
        b = client.get(f"/v1/batches/{bid}", params={"wait": 30}).json()
        if b["status"] in ("succeeded", "failed", "cancelled"):
            break
    assert b["status"] == "succeeded", b
    t_done = time.perf_counter() - t0
    with client.stream("GET", f"/v1/files/{b['output_file_id']}/content") as resp, \
            open(out, "wb") as f:
        for chunk in resp.iter_bytes():
            f.write(chunk)
    total = time.perf_counter() - t0
    return total, {"upload_s": round(t_up, 2), "scored_s": round(t_done - t_up, 2),
                   "download_s": round(total - t_done, 2), "rows_per_second":
                   b["rows_per_second"]}


def predict_p50(client: httpx.Client, n: int) -> float:
    body = {"inputs": [{f"f{i:02d}": 0.1 for i in range(N_FEATURES)}]}
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post("/v1/models/forest/predict", json=body)
        r.raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="predq-batchfile-"))
    (tmp / "logs").mkdir()
    redis = RedisServer(dir=tmp / "redis")
    sup = Supervisor()
    try:
        log(f"writing {args.rows} rows as CSV and Parquet, training the forest")
        artifact, csv, parquet, _ = make_data(tmp, args.rows)
        from predq.shared.registry.store import Registry

        push_model(Registry(tmp / "registry"), artifact, "forest", aliases=("production",))
        redis.start()
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
        env = {**base, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
               "PREDQ_REDIS_URL": redis.url, "PREDQ_REGISTRY_ROOT": str(tmp / "registry"),
               "PREDQ_FILES_ROOT": str(tmp / "files"), "PREDQ_AUTH_ENABLED": "false",
               "PREDQ_RATE_LIMIT": "", "PREDQ_LOG_LEVEL": "WARNING"}
        workers = [sup.start(f"worker{i}", [sys.executable, "-m", "predq", "worker",
                                            "--hostname", f"bf{i}@%h"],
                             env=env, cwd=tmp, log_path=tmp / "logs" / f"worker{i}.log")
                   for i in range(args.workers)]
        port = free_port()
        api = sup.start("api", [sys.executable, "-m", "predq", "api", "--host", "127.0.0.1",
                                "--port", str(port)], env=env, cwd=tmp,
                        log_path=tmp / "logs" / "api.log")
        url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{url}/healthz", timeout=60, children=[api, *workers])
        results: list[dict[str, Any]] = []
        with httpx.Client(base_url=url, timeout=600, trust_env=False) as client:
            for _ in range(100):  # until a worker answers (model loaded)
                try:
                    predict_p50(client, 1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            idle = predict_p50(client, 50)
            log("warming the lane processes with a small batch on each worker")
            small = tmp / "small.csv"
            with open(csv, "rb") as f:
                small.write_bytes(f.read(200_000).rsplit(b"\n", 1)[0] + b"\n")
            for _ in range(3):
                end_to_end(client, small, "csv", tmp / "small.out.csv")
            for fmt, src in (("csv", csv), ("parquet", parquet)):
                log(f"{fmt}: local script")
                local = local_script(artifact, src, fmt, tmp / f"local.{fmt}")
                log(f"{fmt}: predq end to end")
                e2e, parts = end_to_end(client, src, fmt, tmp / f"predq.{fmt}")
                results.append({"format": fmt, "local_s": local, "predq_s": e2e, **parts})
            # /predict while a batch runs
            r = client.post("/v1/files", content=csv.read_bytes(),
                            headers={"Content-Type": "text/csv"})
            bid = client.post("/v1/models/forest/batches", json={
                "file_id": r.json()["id"], "id_column": "id"}).json()["id"]
            while client.get(f"/v1/batches/{bid}").json()["chunks"]["done"] < 1:
                time.sleep(0.2)
            busy = predict_p50(client, 50)
            still = client.get(f"/v1/batches/{bid}").json()["status"] == "running"
            client.delete(f"/v1/batches/{bid}")
        rss_api = max(peak_rss_mb(api).values())
        rss_workers = [round(max(peak_rss_mb(w).values()), 0) for w in workers]
        print(f"\n## Batch files: {args.rows:,} rows x {N_FEATURES} features, "
              f"RandomForest(100), {args.workers} workers, {os.cpu_count()} CPUs "
              f"(load {os.getloadavg()[0]:.1f})\n")
        print("| format | local script (s) | predq end to end (s) | ratio (target <= 1.5) "
              "| upload / scored / download (s) | rows/s |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['format']} | {r['local_s']:.1f} | {r['predq_s']:.1f} | "
                  f"{r['predq_s'] / r['local_s']:.2f}x | {r['upload_s']} / {r['scored_s']} / "
                  f"{r['download_s']} | {r['rows_per_second']:,.0f} |")
        print(f"\nPeak RSS: API {rss_api:.0f} MB; workers (largest process each) "
              f"{', '.join(f'{w:.0f}' for w in rss_workers)} MB")
        print(f"Idle /predict p50: {idle:.1f} ms without a batch, {busy:.1f} ms while one "
              f"runs{'' if still else ' (it ended during the measurement)'}: "
              f"{busy / idle:.2f}x (target <= 2x)")
    except BaseException:
        for c in sup.children:
            print(f"--- {c.name} ---\n{c.tail(30)}", file=sys.stderr)
        raise
    finally:
        sup.stop_all(timeout=20)
        redis.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
