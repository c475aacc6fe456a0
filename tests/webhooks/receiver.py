"""A webhook receiver for the tests: a real HTTP server on loopback, in its own process.

``python tests/webhooks/receiver.py --secret whsec_... --port-file PATH`` listens on
127.0.0.1 (a free port, written to PATH) and verifies every request with the
``standardwebhooks`` package, exactly as a client of predq would. The URL path picks the
answer, so one receiver serves every scenario:

- ``/hook/ok``: 200;  ``/hook/status/<code>``: that status, always;
- ``/hook/fail/<code>/<n>``: <code> for the first n requests of each webhook-id, then 200;
- ``/hook/retry-after/<s>``: 429 with ``Retry-After: <s>`` once per webhook-id, then 200;
- ``/hook/hang``: never answers;  ``/hook/redirect``: 302 to /hook/ok;
- ``/hook/endless``: 200, then a body that never ends.

``GET /_log`` returns every request received, in order:
``{"t", "path", "host", "headers", "verified", "verify_error", "body", "answered"}``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type",
            "user-agent")


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.webhook = Webhook(secret)
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.seen: Counter[tuple[str, str]] = Counter()


class Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        pass

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        with self.server.lock:
            body = json.dumps(self.server.log).encode()
        self._answer(200, body)

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        t = time.time()
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry: dict[str, Any] = {"t": t, "path": self.path, "host": headers.get("host"),
                                 "headers": {k: headers.get(k) for k in _HEADERS},
                                 "verified": False, "verify_error": None, "body": None}
        try:
            entry["body"] = self.server.webhook.verify(raw, headers)
            entry["verified"] = True
        except WebhookVerificationError as e:
            entry["verify_error"] = str(e)
        key = (self.path, headers.get("webhook-id", ""))
        with self.server.lock:
            self.server.seen[key] += 1
            n = self.server.seen[key]
            entry["answered"] = self._decide(n)[0]
            self.server.log.append(entry)
        code, extra = self._decide(n)
        if code == 0:
            time.sleep(3600)  # the hanging receiver: never answers
        elif code == -1:
            self._endless()
        else:
            self._answer(code, b"{}", extra)

    def _decide(self, n: int) -> tuple[int, dict[str, str]]:
        parts = self.path.strip("/").split("/")[1:]
        mode = parts[0] if parts else "ok"
        if mode == "status":
            return int(parts[1]), {}
        if mode == "fail":
            return (int(parts[1]) if n <= int(parts[2]) else 200), {}
        if mode == "retry-after":
            return (429, {"Retry-After": parts[1]}) if n == 1 else (200, {})
        if mode == "hang":
            return 0, {}
        if mode == "redirect":
            return 302, {"Location": "/hook/ok"}
        if mode == "endless":
            return -1, {}
        return 200, {}

    def _answer(self, code: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.end_headers()  # no length: the body runs until the connection closes
        try:
            while True:
                self.wfile.write(b"x" * 1024)
                time.sleep(0.01)
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--port-file", required=True, type=Path)
    args = parser.parse_args()
    server = Receiver(args.secret)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.rename(args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
