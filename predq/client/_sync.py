"""The synchronous client: :class:`Client`, :class:`Job` and :class:`Batch`.

Thin: each method runs one of :class:`~predq.client._core.Ops`' generators with
``httpx.Client`` (keep-alive connections) and ``time.sleep``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from predq.client._core import (
    BatchView,
    JobView,
    Op,
    Ops,
    Reply,
    Send,
    Sleep,
    client_headers,
    default_key,
    default_url,
    dest_handle,
    frame_of,
    is_frame,
    parse_lines,
)
from predq.client.progress import progress_callback
from predq.client.types import FileInfo, ModelDetail, ModelSummary


class Client:
    """A predq API client. ``url`` and ``api_key`` default to ``PREDQ_URL`` and
    ``PREDQ_API_KEY``; ``timeout`` bounds how long a call waits for a job or batch to end."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 4,
                 http_timeout: float | httpx.Timeout | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        from predq.client._core import http_timeout as _ht

        self.url = (url or default_url()).rstrip("/")
        self._ops = Ops(max_retries=max_retries, timeout=timeout)
        self._http = httpx.Client(base_url=self.url, headers=client_headers(
            api_key if api_key is not None else default_key()), timeout=_ht(http_timeout),
            transport=transport)

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, step: Send) -> Reply:
        content: Any = step.upload() if step.upload is not None else step.body
        request = self._http.build_request(step.method, step.path, params=step.params,
                                           content=content, headers=step.headers)
        response = self._http.send(request, stream=True)
        try:
            if step.download is not None and response.status_code < 400:
                if step.download.seekable():
                    step.download.seek(0)
                    step.download.truncate()
                for chunk in response.iter_bytes():
                    step.download.write(chunk)
                return Reply(response.status_code, dict(response.headers), b"")
            return Reply(response.status_code, dict(response.headers), response.read())
        finally:
            response.close()

    def _run(self, op: Op) -> Any:
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    reply = self._send(step)
                except httpx.TransportError as e:
                    step = op.throw(e)
                else:
                    step = op.send(reply)
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models ----------------------------------------------------------------------------

    def models(self) -> list[ModelSummary]:
        """The registered models (``GET /v1/models``)."""
        return [ModelSummary.model_validate(m) for m in self._run(self._ops.get("/v1/models"))]

    def model(self, name: str, version: str | None = None) -> ModelDetail:
        """One model version's description, schema included."""
        path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "")
        return ModelDetail.model_validate(self._run(self._ops.get(path)))

    # -- jobs ------------------------------------------------------------------------------

    def predict(self, model: str, inputs: Any, *, version: str | None = None,
                wait: float | None = None, timeout: float | None = None,
                metadata: Any = None, idempotency_key: str | None = None) -> Any:
        """Predict now. A DataFrame gives a DataFrame (same index; ``label`` and
        ``proba_<class>``, or ``value``); a list of dicts gives a list of output dicts."""
        outputs = self._run(self._ops.predict(
            model, inputs, version=version, wait=wait, timeout=timeout,
            idempotency_key=idempotency_key, metadata=metadata))
        return frame_of(outputs, inputs.index) if is_frame(inputs) else outputs

    def submit(self, model: str, inputs: Any, *, version: str | None = None,
               webhook: Any = None, metadata: Any = None,
               idempotency_key: str | None = None) -> Job:
        """Queue a job and return at once; the handle waits, reads and cancels it."""
        doc = self._run(self._ops.submit(model, inputs, version=version, webhook=webhook,
                                         metadata=metadata, idempotency_key=idempotency_key))
        return Job(self, doc, inputs.index if is_frame(inputs) else None)

    def job(self, job_id: str) -> Job:
        return Job(self, self._run(self._ops.get(f"/v1/jobs/{job_id}")))

    # -- files and batches -----------------------------------------------------------------

    def upload(self, source: str | Path | IO[bytes] | Any, *, format: str | None = None,
               idempotency_key: str | None = None) -> FileInfo:
        """Upload a file (path, binary file object or DataFrame), streamed."""
        return FileInfo.model_validate(self._run(self._ops.upload(source, format,
                                                                  idempotency_key)))

    def batch(self, model: str, source: str | Path | IO[bytes] | Any, *,
              id_column: str | None = None, version: str | None = None,
              on_error: str | None = None, output_format: str | None = None,
              webhook: Any = None, metadata: Any = None, format: str | None = None,
              idempotency_key: str | None = None) -> Batch:
        """Upload ``source`` and score it as a batch; returns the batch handle at once."""
        file_id = source if isinstance(source, FileInfo) else self.upload(source,
                                                                          format=format)
        options = {"id_column": id_column, "version": version, "on_error": on_error,
                   "output_format": output_format, "metadata": metadata,
                   "webhook": {"url": webhook} if isinstance(webhook, str) else webhook}
        doc = self._run(self._ops.create_batch(model, file_id.id, options, idempotency_key))
        return Batch(self, doc)

    def get_batch(self, batch_id: str) -> Batch:
        return Batch(self, self._run(self._ops.get(f"/v1/batches/{batch_id}")))

    def batches(self, *, limit: int | None = None, after: str | None = None) -> list[Batch]:
        """The caller's batches, newest first."""
        params = {k: v for k, v in {"limit": limit, "after": after}.items() if v is not None}
        reply = self._run(self._ops.json_call("GET", "/v1/batches", params=params))
        doc = reply.json()
        items = doc.get("data", []) if isinstance(doc, dict) else doc
        return [Batch(self, b) for b in items]


class Job(JobView):
    """A submitted job. ``wait`` raises :class:`~predq.client.JobFailed` unless it
    succeeded."""

    def __init__(self, client: Client, doc: dict[str, Any], index: Any = None) -> None:
        super().__init__(doc, index)
        self._client = client

    def refresh(self) -> Job:
        self._update(self._client._run(self._client._ops.get(f"/v1/jobs/{self.id}")))
        return self

    def wait(self, timeout: float | None = None) -> Job:
        self._update(self._client._run(self._client._ops.wait_job(self.id, timeout)))
        return self

    def cancel(self) -> Job:
        self._update(self._client._run(self._client._ops.delete(f"/v1/jobs/{self.id}")))
        return self


class Batch(BatchView):
    """A batch being scored. ``wait`` raises :class:`~predq.client.JobFailed` unless it
    succeeded (``check=False`` returns it whatever its end)."""

    def __init__(self, client: Client, doc: dict[str, Any]) -> None:
        super().__init__(doc)
        self._client = client

    def refresh(self) -> Batch:
        self._update(self._client._run(self._client._ops.get(f"/v1/batches/{self.id}")))
        return self

    def wait(self, timeout: float | None = None,
             progress: bool | Callable[[dict[str, Any]], None] = False,
             check: bool = True) -> Batch:
        """Wait until the batch ends; ``progress=True`` shows a bar on stderr, a callable
        gets the batch document at each poll."""
        with progress_callback(progress) as on_poll:
            self._update(self._client._run(
                self._client._ops.wait_batch(self.id, timeout, on_poll)))
        if check:
            self._check()
        return self

    def cancel(self) -> Batch:
        self._update(self._client._run(self._client._ops.delete(f"/v1/batches/{self.id}")))
        return self

    def download(self, dest: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
        """Stream the output file (rows in input order) to ``dest``."""
        handle, close = dest_handle(dest)
        try:
            self._client._run(self._client._ops.download(self._output_id("output"), handle))
        finally:
            if close:
                handle.close()
        return dest

    def errors(self) -> list[dict[str, Any]]:
        """The error file's lines (one per failed row), or [] when no row failed."""
        if not self._doc.get("error_file_id"):
            return []
        data = self._client._run(self._client._ops.content(self._output_id("error")))
        return parse_lines(data)

    def download_errors(self, dest: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
        handle, close = dest_handle(dest)
        try:
            if self._doc.get("error_file_id"):
                self._client._run(self._client._ops.download(self._output_id("error"),
                                                             handle))
        finally:
            if close:
                handle.close()
        return dest
