"""RSS and PSS of each worker process with two models loaded (``python -m bench.memory``).

Starts its own Redis and one ``predq worker -c N`` on a temporary registry holding two
RandomForest(100) models (breast_cancer and iris, both on treelite), preloaded before the
pool forks, and prints, once the worker is ready, per process of the worker's group, VmRSS,
the proportional set size (PSS, from ``/proc/<pid>/smaps_rollup``: shared pages split
between the processes that share them) and the anonymous memory (heap, including the pages
still shared copy-on-write since the fork; not the file pages of a memory-mapped model, which
the page cache holds once for every process that maps the file).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import memory_of
from predq.push import push_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory")
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args(argv)

    from bench.peers import train_model
    from predq.demo import train_demo_model
    from predq.procs import group_pids
    from predq.redis_server import RedisServer
    from predq.shared.registry.serialization import dump_estimator
    from predq.shared.registry.store import Registry

    tmp = Path(tempfile.mkdtemp(prefix="predq-mem-"))
    registry = Registry(tmp / "registry")
    train_model(tmp / "cancer.joblib")
    dump_estimator(train_demo_model(), tmp / "iris.joblib", "joblib")
    for name in ("cancer", "iris"):
        m = push_model(registry, tmp / f"{name}.joblib", name)
        print(f"{name}: runtime {m.runtime.name}, artifact {m.size_bytes / 1e6:.1f} MB")
    with RedisServer(dir=tmp / "redis") as redis:
        env = {**os.environ, "PREDQ_REDIS_URL": redis.url,
               "PREDQ_REGISTRY_ROOT": str(registry.root), "PREDQ_AUTH_ENABLED": "false"}
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "predq", "worker", "-c",
                                 str(args.concurrency)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                text = (tmp / "worker.log").read_text(errors="replace")
                if "ready." in text and text.count("preloaded model") >= 2:
                    break
                time.sleep(0.5)
            time.sleep(2)
            pids = sorted(group_pids(proc.pid))
            print("\n| process | VmRSS MB | PSS MB | anonymous MB | shared MB |\n"
                  "|---|---:|---:|---:|---:|")
            total_pss = 0.0
            for pid in pids:
                mem = memory_of(pid)
                total_pss += mem["pss_mb"]
                role = "consumer (parent)" if pid == proc.pid else "pool process"
                print(f"| {pid} {role} | {mem['rss_mb']:.1f} | {mem['pss_mb']:.1f} | "
                      f"{mem['anon_mb']:.1f} | {mem['shared_mb']:.1f} |")
            print(f"\nsum of PSS (what the worker really costs): {total_pss:.1f} MB")
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
