"""``predq up`` end to end: the printed demo job succeeds, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

from predq.procs import child_pids, group_pids, tail_file
from predq.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc"),
]

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@dataclass
class Curl:
    """The parts of a printed ``curl`` command that a test needs to replay it."""

    method: str = "GET"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None


def parse_curl(command: str) -> Curl:
    curl = Curl()
    words = iter(shlex.split(command)[1:])
    for word in words:
        if word == "-X":
            curl.method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(":")
            curl.headers[name.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-raw"):
            curl.data = next(words)
            curl.method = curl.method if curl.method != "GET" else "POST"
        elif word.startswith("http"):
            curl.url = word
    assert curl.url, command
    return curl


class Output:
    """``predq up``'s merged stdout/stderr, teed to a log file and readable line by line."""

    def __init__(self, stream: IO[bytes], log: Path) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.log = log
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        with stream, open(self.log, "a", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                self.lines.put(line)

    def wait_for_banner(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, str]:
        """Read until the banner's fetch command; return its API/Flower URLs and curls."""
        found: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while "fetch" not in found:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no banner in {timeout:g}s:\n{tail_file(self.log, 80)}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.5)).strip()
            except queue.Empty:
                if proc.poll() is not None:
                    raise AssertionError(f"predq up exited with {proc.returncode}:\n"
                                         f"{tail_file(self.log, 80)}") from None
                continue
            for label in ("API", "Flower"):
                if line.startswith(f"{label} ") and "http" in line:
                    found[label] = line.split()[1]
            if line.startswith("Flower login "):
                found["flower_login"] = line.split()[2]
            if line.startswith("curl ") and "-X POST" in line:
                found["submit"] = line
            elif line.startswith("curl ") and "JOB_ID" in line:
                found["fetch"] = line
        return found


def _replay(client: httpx.Client, curl: Curl) -> httpx.Response:
    return client.request(curl.method, curl.url, headers=curl.headers,
                          content=curl.data.encode() if curl.data is not None else None)


@pytest.mark.parametrize("durable", [False, True], ids=["default", "durable-submit"])
def test_up_serves_the_demo_and_stops_everything(tmp_path: Path, durable: bool) -> None:
    """With PREDQ_DURABLE_SUBMIT on, ``predq up`` starts its Redis with appendfsync always:
    on a Redis without WAITAOF (7.0 here) the demo submit gets its 202 only because of that
    (else it would be a 503 naming appendfsync)."""
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    if durable:
        env["PREDQ_DURABLE_SUBMIT"] = "true"
    env.update(
        PREDQ_REGISTRY_ROOT=str(tmp_path / "registry"),
        PREDQ_HOME=str(tmp_path / "home"),  # its Redis data, state file and dev key
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "predq", "up", "--port", str(port),
         "--flower-port", str(flower_port)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert up.stdout is not None
    output = Output(up.stdout, tmp_path / "up.log")
    groups: set[int] = set()
    try:
        banner = output.wait_for_banner(up, timeout=180)
        # Its children: redis-server, api, worker and flower, each leading its own group.
        children = child_pids(up.pid)
        groups = {os.getpgid(pid) for pid in children}
        assert len(children) >= 4 and len(groups) >= 4, children
        assert up.pid not in groups
        assert banner["API"] == f"http://127.0.0.1:{port}"

        with httpx.Client(timeout=30, trust_env=False) as client:
            # Flower's UI and HTTP API take the same login, which the banner prints.
            user, _, password = banner["flower_login"].partition(":")
            assert user == "predq" and password
            assert client.get(f"{banner['Flower']}/api/workers").status_code == 401
            assert client.get(banner["Flower"]).status_code == 401
            assert client.get(f"{banner['Flower']}/api/workers",
                              auth=(user, password)).status_code == 200
            assert client.get(banner["Flower"], auth=(user, password)).status_code == 200
            submitted = _replay(client, parse_curl(banner["submit"]))
            assert submitted.status_code == 202, submitted.text
            job = submitted.json()
            assert job["status"] == "queued" and job["id"]

            fetch = parse_curl(banner["fetch"])
            fetch.url = fetch.url.replace("JOB_ID", job["id"])
            deadline = time.monotonic() + 90
            while True:
                result = _replay(client, fetch)
                assert result.status_code == 200, result.text
                body = result.json()
                if body["status"] in TERMINAL or time.monotonic() > deadline:
                    break
            assert body["status"] == "succeeded", body
            assert len(body["outputs"]) == 1
            assert body["outputs"][0]["label"] == "setosa"

        up.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal does
        assert up.wait(timeout=90) == 0, tail_file(output.log, 80)
        left = {pgid: group_pids(pgid) for pgid in groups | {up.pid}}
        assert all(not pids for pids in left.values()), left
    except BaseException:
        print(f"--- predq up output ({output.log}) ---\n{tail_file(output.log, 150)}")
        raise
    finally:
        _stop_everything(up, groups)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _stop_everything(up: subprocess.Popen[bytes], groups: set[int]) -> None:
    """After a failure: let ``up`` clean up (SIGTERM), then SIGKILL whatever remains."""
    if up.poll() is None:
        groups |= {g for g in map(_pgid, child_pids(up.pid)) if g is not None}
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=30)
    for pgid in groups:
        if group_pids(pgid):
            os.killpg(pgid, signal.SIGKILL)


CHURN_SCRIPT = """
import joblib
import pandas as pd
from sklearn.linear_model import LogisticRegression

X = pd.DataFrame({"tenure": [1, 5, 20, 40, 3, 60], "monthly": [70.0, 50.5, 30.2, 20.0, 90.1, 25.3]})
joblib.dump(LogisticRegression().fit(X, [1, 1, 0, 0, 1, 0]), "churn.joblib")
"""


def _start_up(cwd: Path, env: dict[str, str], port: int, flower_port: int, log: Path
              ) -> tuple[subprocess.Popen[bytes], Output]:
    up = subprocess.Popen(
        [sys.executable, "-m", "predq", "up", "--port", str(port),
         "--flower-port", str(flower_port), "--no-demo"],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    assert up.stdout is not None
    return up, Output(up.stdout, log)


@pytest.mark.timeout(600)
def test_a_model_pushed_from_another_directory_is_served_by_up(tmp_path: Path) -> None:
    """The first hour: `predq up` in the clone; in another directory, with nothing exported,
    push a model, check the worker, predict with the saved key; restart, same key."""
    xdg = tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")}
    env.update(
        XDG_DATA_HOME=str(xdg),  # the default PREDQ_HOME is $XDG_DATA_HOME/predq
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
    )
    clone, elsewhere = tmp_path / "clone", tmp_path / "elsewhere"
    clone.mkdir()
    elsewhere.mkdir()
    home = xdg / "predq"

    def predq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "predq", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)

    port, flower_port = free_port(), free_port()
    up, output = _start_up(clone, env, port, flower_port, tmp_path / "up.log")
    groups: set[int] = set()
    try:
        banner = output.wait_for_banner(up, timeout=180)
        groups = {os.getpgid(pid) for pid in child_pids(up.pid)}
        assert (home / "up.json").is_file()

        subprocess.run([sys.executable, "-c", CHURN_SCRIPT], cwd=elsewhere, env=env,
                       check=True, timeout=120)
        pushed = predq("models", "push", "churn.joblib", "--name", "churn")
        assert pushed.returncode == 0, pushed.stderr
        assert str(home / "registry" / "churn" / "1") in pushed.stdout
        assert not (elsewhere / ".predq").exists()  # the registry did not follow the cwd
        key = predq("keys", "dev").stdout.strip()
        assert key.startswith("pq_")

        deadline = time.monotonic() + 90  # the worker's first heartbeat, via up's Redis
        while (check := predq("healthcheck", "worker")).returncode != 0:
            assert time.monotonic() < deadline, check.stderr
            time.sleep(1)
        assert check.stdout.strip() == "ok"

        with httpx.Client(base_url=banner["API"], timeout=60, trust_env=False) as client:
            r = client.post("/v1/models/churn/predict", params={"wait": 30},
                            json={"inputs": [{"tenure": 2, "monthly": 80.0}]},
                            headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["label"] == 1

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=90) == 0, tail_file(output.log, 80)
        assert not (home / "up.json").exists()  # removed on exit

        # A restart keeps the key: saved scripts keep working.
        up, output = _start_up(clone, env, port, flower_port, tmp_path / "up2.log")
        banner = output.wait_for_banner(up, timeout=180)
        groups |= {os.getpgid(pid) for pid in child_pids(up.pid)}
        with httpx.Client(base_url=banner["API"], timeout=60, trust_env=False) as client:
            r = client.get("/v1/models/churn", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=90) == 0, tail_file(output.log, 80)
    except BaseException:
        print(f"--- predq up output ({output.log}) ---\n{tail_file(output.log, 150)}")
        raise
    finally:
        _stop_everything(up, groups)
