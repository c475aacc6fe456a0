"""The client's logic, written once for both the sync and the async client (sans-I/O).

Every operation is a generator that yields *steps* and gets their outcomes back:
:class:`Send` (one HTTP attempt; the driver sends the reply back, or throws the transport
error in) and :class:`Sleep`. :class:`~predq.client.Client` drives the generators with
``httpx.Client`` and ``time.sleep``, :class:`~predq.client.AsyncClient` with
``httpx.AsyncClient`` and ``asyncio.sleep``. So retries, waiting, error mapping and the
DataFrame conversions exist in one place and behave the same in both.

Retry contract (:meth:`Ops.call`): connection errors, timeouts, 429 and 503 are retried with
exponential backoff and full jitter, at least ``Retry-After`` when the server sends it, up to
``max_retries`` times. A GET or DELETE is always safe to retry; a POST only when it carries an
``Idempotency-Key``, which every POST of this client does (one key per call, the same on each
retry of that call), so a retried POST returns the job it created instead of a second one.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from predq.client.errors import (
    InvalidInput,
    JobFailed,
    PredqError,
    ServerUnavailable,
    WaitTimeout,
    error_for,
    retry_after_seconds,
)
from predq.client.types import TERMINAL

#: The longest single ``?wait=`` the client asks for; the server caps it too.
MAX_WAIT_S = 30.0
#: Statuses worth retrying: the server is busy or briefly away.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
UPLOAD_CHUNK = 1 << 20

FORMATS = {".csv": ("csv", "text/csv"), ".jsonl": ("jsonl", "application/x-ndjson"),
           ".ndjson": ("jsonl", "application/x-ndjson"),
           ".parquet": ("parquet", "application/vnd.apache.parquet"),
           ".pq": ("parquet", "application/vnd.apache.parquet")}


@dataclass
class Send:
    """One HTTP attempt. ``upload`` opens a fresh body stream per attempt (so a retry can
    resend it); ``download`` is where a streamed reply body goes instead of ``Reply.body``."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    upload: Callable[[], Iterator[bytes]] | None = None
    download: IO[bytes] | None = None

    @property
    def retriable(self) -> bool:
        return self.method in ("GET", "HEAD", "DELETE") or "Idempotency-Key" in self.headers


@dataclass
class Sleep:
    seconds: float


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Step = Send | Sleep
Op = Generator[Step, Any, Any]


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item):
        return item()
    iso = getattr(obj, "isoformat", None)  # datetimes, pandas Timestamps
    if callable(iso):
        return iso()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _finite(value: Any) -> Any:
    """NaN (pandas' missing value) becomes null; the server decides whether null is allowed."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def is_frame(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "to_dict")


def rows_of(inputs: Any) -> list[dict[str, Any]]:
    """The input rows as JSON-ready dicts: a DataFrame's records (NaN as null), a list of
    dicts as given."""
    if is_frame(inputs):
        records = inputs.to_dict(orient="records")
        return [{str(k): _finite(v) for k, v in r.items()} for r in records]
    if isinstance(inputs, Mapping):
        raise TypeError("inputs must be a list of dicts (one per row) or a DataFrame, "
                        "not one dict")
    return list(inputs)


def encode(body: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(body, default=_json_default, allow_nan=False,
                          separators=(",", ":")).encode()
    except ValueError as e:
        raise InvalidInput(f"the inputs cannot be sent as JSON: {e} (infinity is not a "
                           "valid feature value)") from e


def output_columns(outputs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Flat columns of output rows: ``label`` and ``proba_<class>``, or ``value``."""
    cols: dict[str, list[Any]] = {}
    for row in outputs:
        for key, value in row.items():
            if key == "probabilities" and isinstance(value, Mapping):
                for cls, p in value.items():
                    cols.setdefault(f"proba_{cls}", []).append(p)
            else:
                cols.setdefault(key, []).append(value)
    return cols


def frame_of(outputs: Sequence[Mapping[str, Any]], index: Any = None) -> Any:
    """Output rows as a DataFrame (same index as the input frame, when given)."""
    import pandas as pd  # only DataFrame users need pandas

    return pd.DataFrame(output_columns(outputs), index=index)


def file_format(name: str) -> tuple[str, str, bool]:
    """(format, Content-Type, gzipped) from a file name such as ``rows.csv.gz``."""
    p = Path(name.lower())
    gz = p.suffix == ".gz"
    if gz:
        p = p.with_suffix("")
    try:
        fmt, ctype = FORMATS[p.suffix]
    except KeyError:
        raise InvalidInput(f"cannot tell the format of {name!r}: name it .csv, .jsonl or "
                           ".parquet (optionally .gz), or pass format=") from None
    return fmt, ctype, gz


@dataclass
class Upload:
    """A file to upload: a path, a binary file object, or a DataFrame (sent as Parquet)."""

    open: Callable[[], Iterator[bytes]]
    content_type: str
    gzip: bool
    filename: str | None = None

    @classmethod
    def of(cls, source: Any, fmt: str | None = None) -> Upload:
        if is_frame(source):
            import io

            buf = io.BytesIO()
            source.to_parquet(buf, index=False)
            data = buf.getvalue()
            return cls(lambda: iter([data]), FORMATS[".parquet"][1], False, "dataframe.parquet")
        if isinstance(source, str | Path):
            path = Path(source)
            detected, ctype, gz = file_format(path.name)
            if fmt:
                ctype = FORMATS["." + fmt][1]

            def chunks() -> Iterator[bytes]:
                with path.open("rb") as f:
                    while block := f.read(UPLOAD_CHUNK):
                        yield block
            return cls(chunks, ctype, gz, path.name)
        if hasattr(source, "read"):
            name = getattr(source, "name", "") or ""
            if fmt:
                ctype, gz = FORMATS["." + fmt][1], str(name).endswith(".gz")
            else:
                _, ctype, gz = file_format(str(name))
            start = source.tell() if source.seekable() else None

            def stream() -> Iterator[bytes]:
                if start is not None:
                    source.seek(start)
                while block := source.read(UPLOAD_CHUNK):
                    yield block
            return cls(stream, ctype, gz, Path(str(name)).name or None)
        raise TypeError("batch input must be a path, a binary file object or a DataFrame")


class Ops:
    """The operations, as generators of steps (see the module docstring)."""

    def __init__(self, *, max_retries: int = 4, backoff_s: float = 0.25,
                 max_backoff_s: float = 20.0, timeout: float = 60.0) -> None:
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout = timeout

    # -- one request, with retries ---------------------------------------------------------

    def delay(self, attempt: int, reply: Reply | None) -> float:
        """Full jitter over an exponential cap, and never less than Retry-After."""
        base = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
        after = retry_after_seconds(reply.headers) if reply is not None else None
        return min(self.max_backoff_s, max(base, after or 0.0))

    def call(self, send: Send) -> Generator[Step, Any, Reply]:
        attempt = 0
        while True:
            reply: Reply | None = None
            try:
                reply = yield send
            except httpx.TransportError as e:
                if not send.retriable or attempt >= self.max_retries:
                    raise ServerUnavailable(
                        f"{send.method} {send.path}: no answer from the server "
                        f"({type(e).__name__}: {e})") from e
            else:
                if reply.status < 400:
                    return reply
                problem = _problem(reply)
                if not (reply.status in RETRY_STATUSES and send.retriable
                        and attempt < self.max_retries
                        and problem.get("title") != "Prediction failed"):
                    raise error_for(reply.status, problem, reply.headers)
            yield Sleep(self.delay(attempt, reply))
            attempt += 1

    def json_call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
                  params: dict[str, Any] | None = None,
                  idempotency_key: str | None = None) -> Generator[Step, Any, Reply]:
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        send = Send(method, path, params=params or {},
                    body=encode(body) if body is not None else None, headers=headers)
        return (yield from self.call(send))

    # -- jobs ------------------------------------------------------------------------------

    @staticmethod
    def job_body(inputs: Any, version: str | None, metadata: Any = None,
                 webhook: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": rows_of(inputs)}
        if version is not None:
            body["version"] = version
        if metadata is not None:
            body["metadata"] = metadata
        if webhook is not None:
            body["webhook"] = {"url": webhook} if isinstance(webhook, str) else webhook
        return body

    def predict(self, model: str, inputs: Any, *, version: str | None, wait: float | None,
                timeout: float | None, idempotency_key: str | None,
                metadata: Any = None) -> Op:
        """Outputs of one synchronous predict; a 202 is followed until the job ends."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        params = {} if wait is None else {"wait": wait}
        reply = yield from self.json_call(
            "POST", f"/v1/models/{model}/predict", self.job_body(inputs, version, metadata),
            params=params, idempotency_key=idempotency_key)
        doc = reply.json()
        if reply.status == 200:
            return doc["outputs"]
        job = yield from self.wait_job(doc["id"], deadline - time.monotonic())
        return job["outputs"]

    def submit(self, model: str, inputs: Any, *, version: str | None, webhook: Any,
               metadata: Any, idempotency_key: str | None) -> Op:
        reply = yield from self.json_call(
            "POST", f"/v1/models/{model}/jobs",
            self.job_body(inputs, version, metadata, webhook),
            idempotency_key=idempotency_key)
        return reply.json()

    def get(self, path: str, wait: float | None = None) -> Op:
        params = {"wait": round(wait, 3)} if wait else {}
        reply = yield from self.json_call("GET", path, params=params)
        return reply.json()

    def delete(self, path: str) -> Op:
        reply = yield from self.json_call("DELETE", path)
        return reply.json() if reply.body else None

    def wait_job(self, job_id: str, timeout: float | None) -> Op:
        """The job once it ended; raises JobFailed unless it succeeded."""
        doc = yield from self._wait(f"/v1/jobs/{job_id}", timeout, None)
        if doc["status"] != "succeeded":
            err = doc.get("error") or {}
            why = f": {err.get('type')}: {err.get('message')}" if err else ""
            raise JobFailed(f"job {job_id} {doc['status']}{why}", job=doc)
        return doc

    def _wait(self, path: str, timeout: float | None,
              on_poll: Callable[[dict[str, Any]], None] | None,
              poll_s: float = MAX_WAIT_S) -> Op:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        doc = yield from self.get(path)
        while doc["status"] not in TERMINAL:
            if on_poll is not None:
                on_poll(doc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"{path} is still {doc['status']} after the timeout; it "
                                  "keeps running")
            doc = yield from self.get(path, wait=min(left, poll_s))
        if on_poll is not None:
            on_poll(doc)
        return doc

    # -- files and batches -----------------------------------------------------------------

    def upload(self, source: Any, fmt: str | None = None,
               idempotency_key: str | None = None) -> Op:
        up = Upload.of(source, fmt)
        headers = {"Content-Type": up.content_type,
                   "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        if up.gzip:
            headers["Content-Encoding"] = "gzip"
        params = {"filename": up.filename[:255]} if up.filename else {}
        reply = yield from self.call(Send("POST", "/v1/files", params=params, headers=headers,
                                          upload=up.open))
        return reply.json()

    def create_batch(self, model: str, file_id: str, options: dict[str, Any],
                     idempotency_key: str | None) -> Op:
        body = {"file_id": file_id, **{k: v for k, v in options.items() if v is not None}}
        reply = yield from self.json_call("POST", f"/v1/models/{model}/batches", body,
                                          idempotency_key=idempotency_key)
        return reply.json()

    def wait_batch(self, batch_id: str, timeout: float | None,
                   on_poll: Callable[[dict[str, Any]], None] | None) -> Op:
        # With progress shown, poll often enough for the bar to move.
        poll = 1.0 if on_poll is not None else MAX_WAIT_S
        return (yield from self._wait(f"/v1/batches/{batch_id}", timeout, on_poll, poll))

    def download(self, file_id: str, dest: IO[bytes]) -> Op:
        yield from self.call(Send("GET", f"/v1/files/{file_id}/content", download=dest))

    def content(self, file_id: str) -> Op:
        reply = yield from self.call(Send("GET", f"/v1/files/{file_id}/content"))
        return reply.body


def _problem(reply: Reply) -> dict[str, Any]:
    try:
        doc = json.loads(reply.body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return doc
    text = reply.body[:500].decode("utf-8", "replace").strip()
    return {"title": f"HTTP {reply.status}", "status": reply.status, "detail": text}


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


class _View:
    """What a handle knows without I/O: the document the API last returned for it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self._doc = doc

    def _update(self, doc: dict[str, Any]) -> None:
        self._doc = doc

    @property
    def document(self) -> dict[str, Any]:
        """The last-read JSON document, as the API returned it."""
        return dict(self._doc)

    @property
    def id(self) -> str:
        return str(self._doc["id"])

    @property
    def status(self) -> str:
        return str(self._doc["status"])

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status}>"


class JobView(_View):
    """A job handle's state: its last-read document and the index of its input frame."""

    def __init__(self, doc: dict[str, Any], index: Any = None) -> None:
        super().__init__(doc)
        self._index = index

    @property
    def info(self) -> Any:
        from predq.client.types import JobInfo

        return JobInfo.model_validate(self._doc)

    @property
    def outputs(self) -> list[dict[str, Any]] | None:
        """One output per input row (after the job succeeded and was read), else None."""
        return self._doc.get("outputs")

    def to_pandas(self) -> Any:
        if self.outputs is None:
            raise PredqError(f"job {self.id} has no outputs (status {self.status}); "
                             "wait() for it first")
        return frame_of(self.outputs, self._index)


class BatchView(_View):
    """A batch handle's state: its last-read document."""

    @property
    def info(self) -> Any:
        from predq.client.types import BatchInfo

        return BatchInfo.model_validate(self._doc)

    def _output_id(self, kind: str) -> str:
        file_id = self._doc.get(f"{kind}_file_id")
        if not file_id:
            raise PredqError(f"batch {self.id} has no {kind} file yet (status {self.status})")
        return str(file_id)

    def _check(self) -> None:
        if self.status != "succeeded":
            err = self._doc.get("error")
            raise JobFailed(f"batch {self.id} {self.status}" + (f": {err}" if err else ""),
                            job=self._doc)


def default_url() -> str:
    import os

    return os.environ.get("PREDQ_URL") or "http://127.0.0.1:8000"


def default_key() -> str | None:
    import os

    return os.environ.get("PREDQ_API_KEY") or None


def client_headers(api_key: str | None) -> dict[str, str]:
    from predq import __version__

    headers = {"User-Agent": f"predq-client/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def http_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """Reads must outlast the longest ``?wait=``; connecting should fail fast."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout or MAX_WAIT_S + 15.0, connect=10.0)


def dest_handle(dest: Any) -> tuple[IO[bytes], bool]:
    if hasattr(dest, "write"):
        return dest, False
    return Path(dest).open("wb"), True
