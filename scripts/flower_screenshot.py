#!/usr/bin/env python3
"""Screenshot Flower's tasks page in headless Chromium (docs/img/flower-tasks.png).

    .venv/bin/python scripts/flower_screenshot.py                 # own stack, then screenshot
    .venv/bin/python scripts/flower_screenshot.py --flower-url http://127.0.0.1:5555 \\
        --user ops --password ...                                  # an existing Flower

Without ``--flower-url`` it starts a throwaway stack (its own redis-server, the demo model, a
worker, the API, and Flower with basic auth on 127.0.0.1), submits ``--jobs`` jobs, waits
until Flower lists them as SUCCESS, takes the screenshot and stops everything. It prints the
job ids so the picture can be checked against them. Needs ``chromium`` (Debian:
``apt-get install -y chromium``) or ``--chromium PATH``. CI does not run it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from predq.procs import Supervisor, wait_for_url  # noqa: E402
from predq.redis_server import RedisServer, free_port  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=15000",
)


def find_chromium(given: str | None) -> str:
    for name in (given, "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    sys.exit("no Chromium found: apt-get install -y chromium, or pass --chromium PATH")


def screenshot(chromium: str, url: str, out: Path, size: str) -> None:
    """Load ``url`` in a fresh headless profile and write a PNG of the window to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="predq-chromium-") as profile:
        argv = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={size}", f"--screenshot={out}", url]
        subprocess.run(argv, check=True, timeout=120, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if not out.exists() or out.stat().st_size == 0:
        sys.exit(f"Chromium wrote no screenshot to {out}")


def wait_tasks(flower: str, auth: tuple[str, str], ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=10).json()
        if all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids):
            return
        time.sleep(0.5)
    sys.exit("Flower did not list every job as SUCCESS in time")


def run_stack(args: argparse.Namespace, chromium: str) -> None:
    from predq.demo import ensure_demo, iris_sample_rows
    from predq.shared.registry.store import Registry

    user, password = "ops", "screenshot-" + os.urandom(6).hex()
    work = Path(tempfile.mkdtemp(prefix="predq-shot-"))
    with RedisServer(dir=work / "redis") as redis, Supervisor() as sup:
        ensure_demo(Registry(work / "registry"))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")},
               "PREDQ_REDIS_URL": redis.url, "PREDQ_REGISTRY_ROOT": str(work / "registry"),
               "PREDQ_AUTH_ENABLED": "false", "PREDQ_FLOWER_BASIC_AUTH": f"{user}:{password}",
               "PYTHONPATH": str(ROOT)}
        api_port, flower_port = free_port(), free_port()
        predq = [sys.executable, "-m", "predq"]
        for name, extra in (("worker", ["worker", "-c", "1", "-n", "worker1@%h"]),
                            ("api", ["api", "--port", str(api_port)]),
                            ("flower", ["flower", "--port", str(flower_port)])):
            sup.start(name, [*predq, *extra], env=env, cwd=work, log_path=work / f"{name}.log")
        api, flower = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{flower_port}"
        wait_for_url(f"{api}/readyz", timeout=90, children=sup.children)
        wait_for_url(f"{flower}/healthcheck", timeout=60, children=sup.children)
        time.sleep(3)  # Flower's event receiver connects after its HTTP server
        ids = []
        with httpx.Client(base_url=api, timeout=30) as c:
            for i in range(args.jobs):
                r = c.post("/v1/models/iris/jobs", json={"inputs": iris_sample_rows(3, seed=i)})
                ids.append(r.json()["id"])
            for job_id in ids:
                c.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        wait_tasks(flower, (user, password), ids, 60)
        url = f"http://{user}:{password}@127.0.0.1:{flower_port}/tasks"
        screenshot(chromium, url, args.out, args.window_size)
    shutil.rmtree(work, ignore_errors=True)
    print("jobs:", *ids, sep="\n  ")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs/img/flower-tasks.png")
    p.add_argument("--flower-url", help="screenshot this Flower instead of starting a stack")
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--jobs", type=int, default=12)
    p.add_argument("--chromium", default=None)
    p.add_argument("--window-size", default="1400,900")
    args = p.parse_args()
    chromium = find_chromium(args.chromium)
    if args.flower_url:
        url = args.flower_url.rstrip("/") + "/tasks"
        if args.user and args.password:
            scheme, _, rest = url.partition("://")
            url = f"{scheme}://{args.user}:{args.password}@{rest}"
        screenshot(chromium, url, args.out, args.window_size)
    else:
        run_stack(args, chromium)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
