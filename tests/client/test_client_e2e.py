"""predq.client against a real stack: every method, sync and async, typed errors, safe retries.

Real uvicorn, real Celery workers and a real Redis (tests/conftest.py); the outputs are
compared with the model's own ``predict_proba`` run here on the same rows.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest

from predq.client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    InvalidInput,
    JobFailed,
    NotFound,
    RateLimited,
    ServerUnavailable,
    Unauthorized,
)
from predq.demo import iris_sample_rows

pytestmark = pytest.mark.integration


def local_model(registry: Any) -> Any:
    from predq.shared.registry.serialization import load_estimator

    manifest = registry.resolve("iris")
    return load_estimator(registry.artifact_path(manifest), fmt=manifest.format,
                          expected_sha256=manifest.sha256)


def test_predict_dataframe_round_trip_equals_a_local_predict(
        stack: Any, registry_with_models: Any, keys: dict[str, str]) -> None:
    s = stack()
    model = local_model(registry_with_models)
    frame = pd.DataFrame(iris_sample_rows(40, seed=3), index=range(100, 140))
    with Client(s.base_url, keys["user"]) as c:
        out = c.predict("iris", frame)
        rows = c.predict("iris", iris_sample_rows(3, seed=4))
    assert list(out.index) == list(frame.index)
    classes = list(model.classes_)
    assert list(out.columns) == ["label"] + [f"proba_{k}" for k in classes]
    assert list(out["label"]) == list(model.predict(frame))
    np.testing.assert_allclose(out[[f"proba_{k}" for k in classes]].to_numpy(),
                               model.predict_proba(frame), rtol=0, atol=1e-12)
    assert len(rows) == 3 and set(rows[0]) == {"label", "probabilities"}


def test_submit_wait_refresh_cancel_and_models(stack: Any, keys: dict[str, str]) -> None:
    s = stack()
    frame = pd.DataFrame(iris_sample_rows(5, seed=5), index=list("abcde"))
    with Client(s.base_url, keys["user"]) as c:
        job = c.submit("iris", frame, metadata={"run": 7})
        assert job.status == "queued" and job.info.n_inputs == 5
        job.wait(timeout=30)
        assert job.status == "succeeded" and len(job.outputs or []) == 5
        assert job.info.metadata == {"run": 7}
        assert list(job.to_pandas().index) == list("abcde")
        assert c.job(job.id).refresh().status == "succeeded"
        with pytest.raises(Conflict):
            job.cancel()
        names = [m.name for m in c.models()]
        assert {"iris", "mixed"} <= set(names)
        detail = c.model("iris")
        assert detail.task == "classification" and detail.version == "1"
        assert c.model("iris", "1").sha256 == detail.sha256


def test_the_async_client_has_the_same_methods(stack: Any, registry_with_models: Any,
                                               keys: dict[str, str]) -> None:
    s = stack()
    model = local_model(registry_with_models)
    frame = pd.DataFrame(iris_sample_rows(20, seed=6))

    async def main() -> None:
        async with AsyncClient(s.base_url, keys["user"]) as c:
            outs = await asyncio.gather(*(c.predict("iris", frame) for _ in range(4)))
            for out in outs:
                assert list(out["label"]) == list(model.predict(frame))
            job = await c.submit("iris", iris_sample_rows(2))
            await job.wait(timeout=30)
            assert job.status == "succeeded"
            assert (await c.job(job.id)).status == "succeeded"
            with pytest.raises(Conflict):
                await job.cancel()
            assert (await c.model("iris")).name == "iris"
            assert any(m.name == "iris" for m in await c.models())
            with pytest.raises(NotFound):
                await c.predict("nope", iris_sample_rows(1))

    asyncio.run(main())


def test_each_problem_type_is_a_typed_error(stack: Any, keys: dict[str, str],
                                            admin_only_key: str) -> None:
    s = stack()
    with Client(s.base_url, keys["user"], max_retries=0) as c:
        with pytest.raises(InvalidInput) as bad:
            c.predict("iris", [{"sepal_length": "x"}])
        assert bad.value.status == 422
        assert any(e["loc"][:3] == ["body", "inputs", 0] for e in bad.value.errors)
        with pytest.raises(NotFound):
            c.model("nope")
        with pytest.raises(NotFound):
            c.job("00000000-0000-0000-0000-000000000000")
    with Client(s.base_url, None, max_retries=0) as anon, pytest.raises(Unauthorized):
        anon.models()
    with Client(s.base_url, "pq_not_a_key", max_retries=0) as wrong, \
            pytest.raises(Unauthorized):
        wrong.models()
    with Client(s.base_url, admin_only_key, max_retries=0) as reader, \
            pytest.raises(Forbidden):
        reader.predict("iris", iris_sample_rows(1))
    with Client(f"http://127.0.0.1:{_closed_port()}", keys["user"], max_retries=1) as down, \
            pytest.raises(ServerUnavailable):
        down.models()


def test_a_cancelled_job_raises_job_failed(stack: Any, keys: dict[str, str]) -> None:
    s = stack(workers=0)  # nothing consumes: the job stays queued until cancelled
    with Client(s.base_url, keys["user"]) as c:
        job = c.submit("iris", iris_sample_rows(1))
        job.cancel()
        assert job.status == "cancelled"
        with pytest.raises(JobFailed, match="cancelled"):
            job.wait(timeout=5)


def test_rate_limited_after_retries(stack: Any, keys: dict[str, str]) -> None:
    s = stack(PREDQ_RATE_LIMIT="3/minute")
    with Client(s.base_url, keys["user"], max_retries=1) as c:
        with pytest.raises(RateLimited) as e:
            for _ in range(10):
                c.models()
        assert e.value.retry_after is not None and e.value.retry_after > 0


def test_a_post_retried_after_a_lost_reply_returns_the_same_job(
        stack: Any, keys: dict[str, str], redis_url: str, settings_env: dict[str, str]
        ) -> None:
    """The connection dies after the server accepted the job; the retry, with the same
    Idempotency-Key, gets the same job back, and only one job exists."""
    s = stack()
    host, port = s.base_url.removeprefix("http://").split(":")
    proxy = DropFirstReply((host, int(port)))
    with Client(f"http://127.0.0.1:{proxy.port}", keys["user"]) as c:
        job = c.submit("iris", iris_sample_rows(2))
        job.wait(timeout=30)
    proxy.close()
    assert proxy.requests == 2 and proxy.dropped == 1
    assert len(set(proxy.idempotency_keys)) == 1
    import redis

    prefix = settings_env["PREDQ_KEY_PREFIX"]
    job_keys = redis.Redis.from_url(redis_url).keys(f"{prefix}:job:*")
    ids = {k.decode().removeprefix(f"{prefix}:job:") for k in job_keys}
    assert ids == {job.id}


def test_the_client_imports_nothing_of_the_server(stack: Any, keys: dict[str, str]) -> None:
    """A client-only install suffices: predict with the server packages made unimportable."""
    s = stack()
    code = f"""
import sys
BLOCKED = {{"celery", "kombu", "redis", "fastapi", "starlette", "uvicorn", "sklearn",
           "joblib", "numpy", "pandas", "orjson", "shared", "api", "worker", "flower",
           "pydantic_settings"}}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {{name}}")
sys.meta_path.insert(0, Block())
from predq.client import Client
c = Client({s.base_url!r}, {keys['user']!r})
out = c.predict("iris", [{{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                           "petal_width": 0.2}}])
assert out[0]["label"] == "setosa", out
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_client_types_match_the_openapi_document(stack: Any, keys: dict[str, str]) -> None:
    import httpx

    from predq.client import types

    s = stack(workers=0)
    doc = httpx.get(f"{s.base_url}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    pairs = {"JobAccepted": types.JobAccepted, "Job": types.JobInfo,
             "PredictResult": types.PredictResult, "ModelSummary": types.ModelSummary,
             "ModelDetail": types.ModelDetail}
    for server_name, cls in pairs.items():
        server_fields = set(schemas[server_name]["properties"])
        assert server_fields == set(cls.model_fields), server_name


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def admin_only_key(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                   keys: dict[str, str]) -> str:
    """A key with only models:read, added to the test's key set (before the stack starts)."""
    import orjson

    from predq.api.security.apikeys import key_spec, new_key

    plain = new_key()
    specs = orjson.loads(env["PREDQ_API_KEYS"])
    specs.append(key_spec("reader", plain, ("models:read",)).model_dump())
    value = orjson.dumps(specs).decode()
    env["PREDQ_API_KEYS"] = value
    monkeypatch.setenv("PREDQ_API_KEYS", value)
    return plain


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DropFirstReply:
    """A TCP proxy that forwards each request to the API and, for the first POST, reads the
    API's reply and then closes the client's connection without passing the reply on."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.requests = 0
        self.dropped = 0
        self.idempotency_keys: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(self.upstream) as up:
            while True:
                request = _read_http(conn)
                if not request:
                    return
                head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                is_post = head.startswith("POST ")
                if is_post:
                    self.requests += 1
                    for line in head.split("\r\n"):
                        if line.lower().startswith("idempotency-key:"):
                            self.idempotency_keys.append(line.split(":", 1)[1].strip())
                up.sendall(request)
                reply = _read_http(up)
                if is_post and self.dropped == 0:
                    self.dropped += 1
                    conn.shutdown(socket.SHUT_RDWR)  # the job exists; the reply is lost
                    return
                conn.sendall(reply)


def _read_http(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (what httpx and uvicorn send here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
