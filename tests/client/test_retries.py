"""predq.client's retry and error contract, against an in-process mock transport (no server).

The end-to-end proofs against a real stack are in test_client_e2e.py; these pin the rules:
which calls are retried, how long the client waits, and which error each problem becomes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

import predq.client._core as core
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
    WaitTimeout,
)

Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, title: str = "t", **extra: object) -> httpx.Response:
    return httpx.Response(status, json={"type": "about:blank", "title": title,
                                        "status": status, "detail": "d", **extra},
                          headers={"content-type": "application/problem+json",
                                   **extra.pop("headers", {})})  # type: ignore[dict-item]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("predq.client._sync.time.sleep", slept.append)
    return slept


def client(handler: Handler, **kw: object) -> Client:
    return Client("http://predq.test", "pq_k", transport=httpx.MockTransport(handler), **kw)


JOB = {"id": "j1", "status": "queued", "model": "m", "version": "1", "n_inputs": 1,
       "created_at": "2026-12-01T00:00:00Z", "links": {}}


def test_post_is_retried_with_the_same_idempotency_key_after_a_connection_error(
        sleeps: list[float]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        if len(seen) == 1:
            raise httpx.ReadError("connection reset")
        return httpx.Response(202, json=JOB)

    job = client(handler).submit("m", [{"x": 1}])
    assert job.id == "j1"
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) >= 32
    assert len(sleeps) == 1


def test_each_call_gets_its_own_key_and_a_given_key_is_sent_as_is() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Idempotency-Key"])
        return httpx.Response(202, json=JOB)

    c = client(handler)
    c.submit("m", [{"x": 1}])
    c.submit("m", [{"x": 1}])
    c.submit("m", [{"x": 1}], idempotency_key="mine-1")
    assert seen[0] != seen[1] and seen[2] == "mine-1"


def test_429_and_503_honour_retry_after(sleeps: list[float]) -> None:
    replies = [problem(429, headers={"Retry-After": "3"}),
               problem(503, headers={"Retry-After": "1"}),
               httpx.Response(200, json=[])]
    assert client(lambda r: replies.pop(0)).models() == []
    assert sleeps[0] >= 3 and sleeps[1] >= 1


def test_retries_give_up_with_the_typed_error(sleeps: list[float]) -> None:
    with pytest.raises(RateLimited) as e:
        client(lambda r: problem(429, headers={"Retry-After": "0"}), max_retries=2).models()
    assert e.value.status == 429 and e.value.retry_after == 0.0
    assert len(sleeps) == 2

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(ServerUnavailable, match="no answer"):
        client(down, max_retries=1).models()


def test_backoff_is_jittered_and_capped() -> None:
    ops = core.Ops(backoff_s=0.5, max_backoff_s=4.0)
    delays = [ops.delay(a, None) for a in range(10) for _ in range(20)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 50  # jitter, not a fixed schedule


@pytest.mark.parametrize(("status", "cls"), [
    (400, InvalidInput), (413, InvalidInput), (415, InvalidInput), (422, InvalidInput),
    (401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict)])
def test_problems_become_typed_errors_without_retry(status: int, cls: type,
                                                    sleeps: list[float]) -> None:
    errors = [{"loc": ["body", "inputs", 0, "x"], "msg": "bad", "type": "float_type"}]
    with pytest.raises(cls) as e:
        client(lambda r: problem(status, errors=errors)).models()
    assert e.value.status == status and e.value.problem["status"] == status
    assert e.value.errors == errors and sleeps == []


def test_a_failed_prediction_is_job_failed_and_not_retried(sleeps: list[float]) -> None:
    with pytest.raises(JobFailed):
        client(lambda r: problem(503, "Prediction failed")).predict("m", [{"x": 1}])
    assert sleeps == []


def test_predict_follows_a_202_until_the_job_ends() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        if request.method == "POST":
            return httpx.Response(202, json=JOB)
        if len(calls) < 4:
            return httpx.Response(200, json={**JOB, "status": "running"})
        return httpx.Response(200, json={**JOB, "status": "succeeded",
                                         "outputs": [{"value": 1.5}]})

    assert client(handler).predict("m", [{"x": 1}]) == [{"value": 1.5}]
    assert calls[0].startswith("POST /v1/models/m/predict")
    assert all(c.startswith("GET /v1/jobs/j1") for c in calls[1:])
    assert "wait=" in calls[-1]


def test_wait_raises_job_failed_and_wait_timeout() -> None:
    failed = {**JOB, "status": "failed", "error": {"type": "PredictError", "message": "boom"}}
    with pytest.raises(JobFailed, match="PredictError: boom") as e:
        client(lambda r: httpx.Response(200, json=failed)).job("j1").wait()
    assert e.value.job["status"] == "failed"
    running = {**JOB, "status": "running"}
    with pytest.raises(WaitTimeout):
        client(lambda r: httpx.Response(200, json=running)).job("j1").wait(timeout=0.01)


def test_dataframe_rows_go_out_as_json_with_nan_as_null() -> None:
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"outputs": [
            {"label": "a", "probabilities": {"a": 0.75, "b": 0.25}},
            {"label": "b", "probabilities": {"a": 0.0, "b": 1.0}}],
            "model": "m", "version": "1", "job_id": "j"})

    frame = pd.DataFrame({"x": [1.5, np.nan], "n": np.array([2**60, 3], dtype="int64"),
                          "s": ["u", None]}, index=[10, 20])
    out = client(handler).predict("m", frame)
    assert bodies[0]["inputs"] == [{"x": 1.5, "n": 2**60, "s": "u"},
                                   {"x": None, "n": 3, "s": None}]
    assert list(out.index) == [10, 20]
    assert list(out.columns) == ["label", "proba_a", "proba_b"]
    assert out.loc[10, "proba_a"] == 0.75


async def test_the_async_client_follows_the_same_rules(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    seen: list[str] = []

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr("predq.client._async.asyncio.sleep", no_sleep)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Idempotency-Key", ""))
        if len(seen) == 1:
            return problem(503, headers={"Retry-After": "0"})
        return httpx.Response(202, json=JOB)

    async with AsyncClient("http://predq.test", "pq_k",
                           transport=httpx.MockTransport(handler)) as c:
        job = await c.submit("m", [{"x": 1}])
    assert job.id == "j1" and seen[0] == seen[1]


def test_env_gives_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDQ_URL", "http://env.test:9")
    monkeypatch.setenv("PREDQ_API_KEY", "pq_env")
    c = Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=[])))
    assert c.url == "http://env.test:9"
    assert c._http.headers["Authorization"] == "Bearer pq_env"
