"""Fixtures of the webhook tests: a real receiver process, and webhook settings.

- ``receiver`` -> :class:`ReceiverProc`: ``tests/webhooks/receiver.py`` on a free loopback
  port, verifying with the *second* of the two configured secrets (so every test also
  proves that signing with several secrets works for a receiver holding only one).
- ``webhook_env`` -> ``dict[str, str]``: the test's ``PREDQ_*`` values plus two secrets,
  the loopback allow-list, a fast retry schedule and a short timeout; also set in-process.
  Tests change entries (before starting processes) for their own scenario.
- ``keys``: API keys ``user`` and ``admin``, configured as hashes.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import configure_keys

HERE = Path(__file__).resolve().parent


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class ReceiverProc:
    proc: subprocess.Popen[bytes]
    base: str
    secret: str

    def hook(self, mode: str) -> str:
        return f"{self.base}/hook/{mode}"

    def log(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.base}/_log", timeout=5).json())

    def wait_for(self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
                 ) -> list[dict[str, Any]]:
        """The log once ``check(log)`` holds; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if check(log):
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver log never satisfied the check: {log[-5:]}")
            time.sleep(0.05)


@pytest.fixture
def webhook_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    old, current = new_secret(), new_secret()
    values = {
        "PREDQ_WEBHOOK_SECRETS": f"{old},{current}",
        "PREDQ_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "PREDQ_WEBHOOK_RETRY_SCHEDULE_S": "0,0.3,0.3,0.3",
        "PREDQ_WEBHOOK_TIMEOUT_S": "3",
    }
    for name, value in values.items():
        env[name] = value
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def receiver(webhook_env: dict[str, str], tmp_path: Path) -> Iterator[ReceiverProc]:
    secret = webhook_env["PREDQ_WEBHOOK_SECRETS"].split(",")[1]
    port_file = tmp_path / "receiver.port"
    log = open(tmp_path / "receiver.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "receiver.py"), "--secret", secret,
         "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREDQ_")},
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the receiver did not start: "
                                     + (tmp_path / "receiver.log").read_text())
            time.sleep(0.02)
        yield ReceiverProc(proc, f"http://127.0.0.1:{port_file.read_text()}", secret)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


@pytest.fixture
def keys(webhook_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return configure_keys(webhook_env, monkeypatch)
