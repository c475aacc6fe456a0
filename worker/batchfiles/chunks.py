"""The two tasks of a batch file: the split, and one chunk (validate, predict, write a part).

Framework-free: :class:`ChunkRunner` takes plain arguments and talks to Redis, the file store
and the model cache; ``predq.worker.batchfiles.lane`` wires it to Celery.

- :meth:`ChunkRunner.split` streams the input file once (pyarrow, bounded memory), writes
  chunk ``k``'s rows as an Arrow IPC file, and publishes chunk ``k``'s task on the batch lane
  as soon as it is written, so chunks run while the split goes on.
- :meth:`ChunkRunner.chunk` validates the chunk (``predq.worker.batchfiles.validation``) with the
rules of
  the JSON path (``predq.shared.registry.schema``: strict types, missing values per the manifest,
  finite
  numbers within float32, unknown categories, string lengths, no extra fields), predicts the
  good rows in vectorized calls through the worker's model cache, and writes its output part
  and its error lines each with write-temp-then-rename. A chunk killed midway leaves no part;
  run again, it writes the same part; the batch store counts it once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import orjson

from predq.shared.batchfiles import batchstore as bstore
from predq.shared.batchfiles.batchstore import BatchScripts, chunk_message, read_sync
from predq.shared.batchfiles.filestore import FILE_FIELDS as _FILE_FIELDS
from predq.shared.batchfiles.filestore import FileStore, decode_record, write_atomic
from predq.shared.batchfiles.tabular import LINE_COLUMN, read_batches
from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import webhook_message
from predq.shared.observability.metrics import (
    BATCH_FILE_CHUNK_SECONDS,
    BATCH_FILE_CHUNKS,
    BATCH_FILE_ROWS,
    BATCHES_FINISHED,
)
from predq.shared.registry.store import Manifest
from predq.shared.settings import Settings
from predq.worker.batchfiles.validation import ids_of, validate, validate_lines

log = logging.getLogger("predq.worker.batches")

#: Most bad rows quoted in a failed batch's error (``on_error: fail``).
_QUOTED_ERRORS = 5


class ChunkRunner:
    """Runs split and chunk tasks (one per pool process; see ``predq.worker.batchfiles.lane``)."""

    def __init__(self, client: Any, settings: Settings, cache_of: Any) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.scripts = BatchScripts(client, self.keys)
        self.store = FileStore(settings.files_root)
        self.cache_of = cache_of

    # -- webhooks -------------------------------------------------------------------------
    def _hooks(self, b: dict[str, Any]) -> dict[str, Any]:
        spec = b.get("webhook")
        if not spec:
            return {}
        q = self.settings.webhook_queue
        out: dict[str, Any] = {"webhook_queue": q}
        for event, arg in (("batch.completed", "completed"), ("batch.failed", "failed")):
            if event in spec.get("events", ()):
                out[arg] = webhook_message(b["id"], event, q)
        return out

    def _fail(self, b: dict[str, Any], kind: str, message: str) -> str:
        hooks = self._hooks(b)
        hooks.pop("completed", None)
        status = _text(self.scripts.fail(b["id"], orjson.dumps({"type": kind,
                                                                 "message": message}), **hooks))
        if status.startswith("now:"):
            try:
                BATCHES_FINISHED.inc(self.client, self.keys, status=bstore.FAILED)
            except Exception as e:
                log.debug("could not record batch metrics: %r", e)
        return f"{kind}: {message}; batch {status}"

    # -- split ----------------------------------------------------------------------------
    def split(self, batch_id: str) -> str:
        """Write the chunks of a batch and publish their tasks; what happened."""
        b = read_sync(self.client, self.keys, batch_id)
        if b is None:
            return "skipped: the batch no longer exists"
        status = _text(self.scripts.start(batch_id))
        if status != bstore.RUNNING:
            return f"skipped: the batch is {status or 'gone'}"
        raw = self.client.hmget(self.keys.file(b["input_file_id"]), _FILE_FIELDS)
        rec = decode_record(raw)
        path = self.store.upload(b["input_file_id"])
        if rec is None or not path.exists():
            return self._fail(b, "InputGone", f"the input file {b['input_file_id']} was "
                              "deleted or expired before the batch could read it")
        manifest = self._manifest(b)
        if manifest is None:
            return self._fail(b, "ModelGone", f"model {b['model']} v{b['version']} no longer "
                              "exists in the registry")
        types: dict[str, str] = {f.name: f.type for f in manifest.features
                                 if f.name in rec["columns"]}
        if b.get("id_column") and rec["format"] == "csv":
            types[b["id_column"]] = "string"
        try:
            k = self._write_chunks(b, rec["format"], path, types)
        except Exception as e:  # an unreadable file fails the batch, clearly
            log.warning("batch %s: split failed: %r", batch_id, e)
            return self._fail(b, "BadFile", f"the input file could not be read: "
                              f"{type(e).__name__}: {str(e)[:500]}")
        return f"split into {k} chunks"

    def _manifest(self, b: dict[str, Any]) -> Manifest | None:
        try:
            return self.cache_of().registry.manifest(b["model"], b["version"])
        except Exception:
            return None

    def _write_chunks(self, b: dict[str, Any], fmt: str, path: Any, types: dict[str, str]
                      ) -> int:
        import pyarrow as pa

        rows = b["chunk_rows"]
        queue = b["queue"]
        k = emitted = 0
        as_text = False
        while True:
            pending: list[Any] = []
            n_pending = 0
            try:
                for batch in read_batches(path, fmt, types, as_text=as_text,  # type: ignore[arg-type]
                                          skip_rows=emitted):
                    pending.append(batch)
                    n_pending += batch.num_rows
                    while n_pending >= rows:
                        table = pa.Table.from_batches(pending)
                        self._emit(b, k, table.slice(0, rows), queue)
                        k, emitted = k + 1, emitted + rows
                        rest = table.slice(rows)
                        pending, n_pending = rest.to_batches(), rest.num_rows
                        if self._stopped(b["id"]):
                            return k
                break
            except pa.ArrowInvalid as e:
                # A value that does not convert (e.g. 'abc' in a number column): read the
                # rest as text; the chunks' validation finds and reports the bad rows.
                if as_text or fmt != "csv" or "conversion error" not in str(e).lower():
                    raise
                as_text = True
        if n_pending:
            self._emit(b, k, pa.Table.from_batches(pending), queue)
            k += 1
        if k != b["chunks_total"]:
            self.client.hset(self.keys.batch(b["id"]), "chunks_total", k)
        return k

    def _emit(self, b: dict[str, Any], k: int, table: Any, queue: str) -> None:
        import pyarrow as pa

        def write(f: Any) -> None:
            with pa.ipc.new_file(f, table.schema) as w:
                w.write_table(table)

        write_atomic(self.store.chunk(b["id"], k), write)
        self.client.lpush(queue, chunk_message(b["id"], k, queue))

    def _stopped(self, batch_id: str) -> bool:
        st = self.client.hget(self.keys.batch(batch_id), "status")
        return st is None or _text(st) in bstore.TERMINAL

    # -- one chunk --------------------------------------------------------------------------
    def chunk(self, batch_id: str, k: int) -> str:
        """Validate, predict and write chunk ``k``; what happened."""
        import pyarrow as pa

        t0 = time.perf_counter()
        b = read_sync(self.client, self.keys, batch_id)
        if b is None:
            return "skipped: the batch no longer exists"
        if b["status"] in bstore.TERMINAL:
            return f"skipped: the batch is {b['status']}"
        try:
            manifest, estimator = self.cache_of().get(b["model"], b["version"])
        except Exception as e:
            return self._fail(b, "ModelLoadError", f"model {b['model']} v{b['version']} could "
                              f"not be loaded: {type(e).__name__}: {e}")
        with pa.memory_map(str(self.store.chunk(batch_id, k))) as src:
            table = pa.ipc.open_file(src).read_all()
        row0 = k * b["chunk_rows"]
        if LINE_COLUMN in table.column_names:
            ok, errors, columns, ids = validate_lines(
                table.column(LINE_COLUMN).to_pylist(), manifest, row0=row0,
                max_string=self.settings.max_string_length, id_column=b.get("id_column"))
        else:
            ok, errors, columns = validate(table, manifest, row0=row0,
                                           max_string=self.settings.max_string_length,
                                           id_column=b.get("id_column"),
                                           strict_text=b["input_format"] != "csv")
            ids = ids_of(table, b.get("id_column"), row0)
        idx = np.flatnonzero(ok)
        outputs, failed_predict = predict_rows(manifest, estimator,
                                               {n: c[idx] for n, c in columns.items()})
        for i, err in failed_predict.items():
            r = int(idx[i])
            errors.setdefault(r, []).append({**err, "loc": ["row", row0 + r]})
        good = np.setdiff1d(idx, np.array([idx[i] for i in failed_predict], dtype=np.int64)) \
            if failed_predict else idx
        keep = np.ones(len(idx), dtype=bool)
        for i in failed_predict:
            keep[i] = False
        out_cols = {name: values[keep] for name, values in outputs.items()}
        id_name = b.get("id_column") or "row"
        id_arr = ids.take(pa.array(good, type=pa.int64()))
        part = pa.table({id_name: id_arr, **{n: pa.array(v) for n, v in out_cols.items()}})
        lines = [orjson.dumps({"row": row0 + r, "id": _py(ids[r]), "errors": errs},
                              option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
                 for r, errs in sorted(errors.items())]

        def write_part(f: Any) -> None:
            with pa.ipc.new_file(f, part.schema) as w:
                w.write_table(part)

        write_atomic(self.store.part(batch_id, k), write_part)
        write_atomic(self.store.errors(batch_id, k), lambda f: f.write(b"".join(lines)))
        failure = b""
        if errors and b["on_error"] == "fail":
            quoted = "; ".join(
                f"row {row0 + r}: {e[0]['loc'][-1]}: {e[0]['msg']}"
                for r, e in sorted(errors.items())[:_QUOTED_ERRORS])
            failure = orjson.dumps({"type": "InvalidRows", "message": (
                f"chunk {k} holds {len(errors)} bad rows (on_error: fail): {quoted}")})
        status = _text(self.scripts.finish_chunk(batch_id, k, len(good), len(errors),
                                                 failure=failure, **self._hooks(b)))
        self._record(b["model"], len(good), len(errors), time.perf_counter() - t0, status)
        return f"chunk {k}: {len(good)} rows, {len(errors)} errors; batch {status}"

    def _record(self, model: str, done: int, failed: int, seconds: float, status: str
                ) -> None:
        """The chunk's Prometheus counters (predq.shared.observability.metrics); never raises."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                BATCH_FILE_ROWS.inc(pipe, self.keys, done, model=model, outcome="done")
                BATCH_FILE_ROWS.inc(pipe, self.keys, failed, model=model, outcome="failed")
                BATCH_FILE_CHUNKS.inc(pipe, self.keys, model=model)
                BATCH_FILE_CHUNK_SECONDS.observe(pipe, self.keys, [seconds])
                if status.startswith("now:"):  # this chunk ended the batch
                    BATCHES_FINISHED.inc(pipe, self.keys, status=status.removeprefix("now:"))
                pipe.execute()
        except Exception as e:
            log.debug("could not record batch metrics: %r", e)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v or "")


def _py(v: Any) -> Any:
    return v.as_py() if hasattr(v, "as_py") else v


# -- prediction -----------------------------------------------------------------------------

def predict_rows(manifest: Manifest, estimator: Any, columns: dict[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], dict[int, dict[str, Any]]]:
    """The output columns of the rows in ``columns`` (label + proba_<class>, or value), in
    vectorized calls; rows whose prediction raises (found by bisection) are left out and
    returned as errors by position."""
    from predq.worker.predict import build_frame

    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        return _out_empty(manifest), {}
    frame = build_frame(manifest, columns)
    failed: dict[int, dict[str, Any]] = {}
    pieces: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

    def run(idx: np.ndarray) -> None:
        part = frame.iloc[idx] if manifest.named_features else frame[idx]
        try:
            pieces.append((idx, _outputs(manifest, estimator, part)))
        except Exception as e:
            if len(idx) == 1:
                failed[int(idx[0])] = {"loc": ["row", None, None], "type": "predict_error",
                                       "msg": f"{type(e).__name__}: {str(e)[:500]}"}
                return
            mid = len(idx) // 2
            run(idx[:mid])
            run(idx[mid:])

    run(np.arange(n))
    pieces.sort(key=lambda p: int(p[0][0]))
    names = list(pieces[0][1]) if pieces else list(_out_empty(manifest))
    out = {name: np.concatenate([p[1][name] for p in pieces]) if pieces else np.array([])
           for name in names}
    return out, failed


def _out_empty(manifest: Manifest) -> dict[str, np.ndarray]:
    if manifest.task == "regression":
        return {"value": np.array([], dtype=np.float64)}
    out: dict[str, np.ndarray] = {"label": np.array([], dtype=object)}
    if manifest.has_predict_proba:
        for c in manifest.classes or ():
            out[f"proba_{c}"] = np.array([], dtype=np.float64)
    return out


def _outputs(manifest: Manifest, estimator: Any, x: Any) -> dict[str, np.ndarray]:
    from predq.worker.predict import _labels_follow_proba

    n = x.shape[0]
    if manifest.task == "regression":
        values = np.asarray(estimator.predict(x), dtype=np.float64)
        _check(values, n)
        return {"value": values}
    if not manifest.has_predict_proba:
        labels = np.asarray(estimator.predict(x))
        _check(labels, n)
        return {"label": labels}
    proba = np.asarray(estimator.predict_proba(x), dtype=np.float64)
    _check(proba, n)
    classes = estimator.classes_
    if _labels_follow_proba(estimator):
        labels = classes.take(np.argmax(proba, axis=1))
    else:
        labels = np.asarray(estimator.predict(x))
        _check(labels, n)
    out: dict[str, np.ndarray] = {"label": labels}
    for j, c in enumerate(classes.tolist()):
        out[f"proba_{c}"] = proba[:, j]
    return out


def _check(arr: np.ndarray, n: int) -> None:
    if arr.shape[0] != n:
        raise ValueError(f"the model returned {arr.shape[0]} rows for {n} inputs")
