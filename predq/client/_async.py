"""The asynchronous client: :class:`AsyncClient`, :class:`AsyncJob` and :class:`AsyncBatch`.

The same methods as the sync client, awaited: each runs one of
:class:`~predq.client._core.Ops`' generators with ``httpx.AsyncClient`` and ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
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


class AsyncClient:
    """A predq API client. ``url`` and ``api_key`` default to ``PREDQ_URL`` and
    ``PREDQ_API_KEY``; ``timeout`` bounds how long a call waits for a job or batch to end."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 4,
                 http_timeout: float | httpx.Timeout | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        from predq.client._core import http_timeout as _ht

        self.url = (url or default_url()).rstrip("/")
        self._ops = Ops(max_retries=max_retries, timeout=timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=client_headers(
            api_key if api_key is not None else default_key()), timeout=_ht(http_timeout),
            transport=transport)

    # -- plumbing --------------------------------------------------------------------------

    async def _send(self, step: Send) -> Reply:
        content: Any = _aiter(step.upload()) if step.upload is not None else step.body
        request = self._http.build_request(step.method, step.path, params=step.params,
                                           content=content, headers=step.headers)
        response = await self._http.send(request, stream=True)
        try:
            if step.download is not None and response.status_code < 400:
                if step.download.seekable():
                    step.download.seek(0)
                    step.download.truncate()
                async for chunk in response.aiter_bytes():
                    step.download.write(chunk)
                return Reply(response.status_code, dict(response.headers), b"")
            return Reply(response.status_code, dict(response.headers), await response.aread())
        finally:
            await response.aclose()

    async def _run(self, op: Op) -> Any:
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    reply = await self._send(step)
                except httpx.TransportError as e:
                    step = op.throw(e)
                else:
                    step = op.send(reply)
        except StopIteration as stop:
            return stop.value

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- models ----------------------------------------------------------------------------

    async def models(self) -> list[ModelSummary]:
        """The registered models (``GET /v1/models``)."""
        models = await self._run(self._ops.get("/v1/models"))
        return [ModelSummary.model_validate(m) for m in models]

    async def model(self, name: str, version: str | None = None) -> ModelDetail:
        """One model version's description, schema included."""
        path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "")
        return ModelDetail.model_validate(await self._run(self._ops.get(path)))

    # -- jobs ------------------------------------------------------------------------------

    async def predict(self, model: str, inputs: Any, *, version: str | None = None,
                wait: float | None = None, timeout: float | None = None,
                metadata: Any = None, idempotency_key: str | None = None) -> Any:
        """Predict now. A DataFrame gives a DataFrame (same index; ``label`` and
        ``proba_<class>``, or ``value``); a list of dicts gives a list of output dicts."""
        outputs = await self._run(self._ops.predict(
            model, inputs, version=version, wait=wait, timeout=timeout,
            idempotency_key=idempotency_key, metadata=metadata))
        return frame_of(outputs, inputs.index) if is_frame(inputs) else outputs

    async def submit(self, model: str, inputs: Any, *, version: str | None = None,
               webhook: Any = None, metadata: Any = None,
               idempotency_key: str | None = None) -> AsyncJob:
        """Queue a job and return at once; the handle waits, reads and cancels it."""
        doc = await self._run(self._ops.submit(model, inputs, version=version, webhook=webhook,
                                         metadata=metadata, idempotency_key=idempotency_key))
        return AsyncJob(self, doc, inputs.index if is_frame(inputs) else None)

    async def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, await self._run(self._ops.get(f"/v1/jobs/{job_id}")))

    # -- files and batches -----------------------------------------------------------------

    async def upload(self, source: str | Path | IO[bytes] | Any, *, format: str | None = None,
               idempotency_key: str | None = None) -> FileInfo:
        """Upload a file (path, binary file object or DataFrame), streamed."""
        return FileInfo.model_validate(await self._run(self._ops.upload(source, format,
                                                                  idempotency_key)))

    async def batch(self, model: str, source: str | Path | IO[bytes] | Any, *,
              id_column: str | None = None, version: str | None = None,
              on_error: str | None = None, output_format: str | None = None,
              webhook: Any = None, metadata: Any = None, format: str | None = None,
              idempotency_key: str | None = None) -> AsyncBatch:
        """Upload ``source`` and score it as a batch; returns the batch handle at once."""
        file_id = source if isinstance(source, FileInfo) else await self.upload(source,
                                                                          format=format)
        options = {"id_column": id_column, "version": version, "on_error": on_error,
                   "output_format": output_format, "metadata": metadata,
                   "webhook": {"url": webhook} if isinstance(webhook, str) else webhook}
        doc = await self._run(self._ops.create_batch(model, file_id.id, options, idempotency_key))
        return AsyncBatch(self, doc)

    async def get_batch(self, batch_id: str) -> AsyncBatch:
        return AsyncBatch(self, await self._run(self._ops.get(f"/v1/batches/{batch_id}")))

    async def batches(self, *, limit: int | None = None, after: str | None = None
                      ) -> list[AsyncBatch]:
        """The caller's batches, newest first."""
        params = {k: v for k, v in {"limit": limit, "after": after}.items() if v is not None}
        reply = await self._run(self._ops.json_call("GET", "/v1/batches", params=params))
        doc = reply.json()
        items = doc.get("data", []) if isinstance(doc, dict) else doc
        return [AsyncBatch(self, b) for b in items]


class AsyncJob(JobView):
    """A submitted job. ``wait`` raises :class:`~predq.client.JobFailed` unless it
    succeeded."""

    def __init__(self, client: AsyncClient, doc: dict[str, Any], index: Any = None) -> None:
        super().__init__(doc, index)
        self._client = client

    async def refresh(self) -> AsyncJob:
        self._update(await self._client._run(self._client._ops.get(f"/v1/jobs/{self.id}")))
        return self

    async def wait(self, timeout: float | None = None) -> AsyncJob:
        self._update(await self._client._run(self._client._ops.wait_job(self.id, timeout)))
        return self

    async def cancel(self) -> AsyncJob:
        self._update(await self._client._run(self._client._ops.delete(f"/v1/jobs/{self.id}")))
        return self


class AsyncBatch(BatchView):
    """A batch being scored. ``wait`` raises :class:`~predq.client.JobFailed` unless it
    succeeded (``check=False`` returns it whatever its end)."""

    def __init__(self, client: AsyncClient, doc: dict[str, Any]) -> None:
        super().__init__(doc)
        self._client = client

    async def refresh(self) -> AsyncBatch:
        self._update(await self._client._run(self._client._ops.get(f"/v1/batches/{self.id}")))
        return self

    async def wait(self, timeout: float | None = None,
             progress: bool | Callable[[dict[str, Any]], None] = False,
             check: bool = True) -> AsyncBatch:
        """Wait until the batch ends; ``progress=True`` shows a bar on stderr, a callable
        gets the batch document at each poll."""
        with progress_callback(progress) as on_poll:
            self._update(await self._client._run(
                self._client._ops.wait_batch(self.id, timeout, on_poll)))
        if check:
            self._check()
        return self

    async def cancel(self) -> AsyncBatch:
        self._update(await self._client._run(self._client._ops.delete(f"/v1/batches/{self.id}")))
        return self

    async def download(self, dest: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
        """Stream the output file (rows in input order) to ``dest``."""
        handle, close = dest_handle(dest)
        try:
            await self._client._run(self._client._ops.download(self._output_id("output"), handle))
        finally:
            if close:
                handle.close()
        return dest

    async def errors(self) -> list[dict[str, Any]]:
        """The error file's lines (one per failed row), or [] when no row failed."""
        if not self._doc.get("error_file_id"):
            return []
        data = await self._client._run(self._client._ops.content(self._output_id("error")))
        return parse_lines(data)

    async def download_errors(self, dest: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
        handle, close = dest_handle(dest)
        try:
            if self._doc.get("error_file_id"):
                await self._client._run(self._client._ops.download(self._output_id("error"),
                                                             handle))
        finally:
            if close:
                handle.close()
        return dest


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A sync chunk iterator (file reads) as the async body httpx.AsyncClient streams."""
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)
