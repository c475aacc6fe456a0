"""The micro-batch: many queued jobs, one vectorized predict call per model version.

Framework-free: :meth:`BatchPredictor.run` takes plain request tuples, talks to Redis in two
round trips (claim, finish) whatever the batch size, and returns what happened to each job.
Invariants: every job handed in gets exactly one outcome, except a duplicate delivery (the job
runs under another delivery's live claim lease, or already ended through one), which is
skipped and listed in ``BatchReport.duplicates``; ``len(outputs) == len(inputs)`` is checked
per call; a failure fails only the jobs it touches (a raising batch is bisected, so one
poison row fails its own job and not its neighbours; a merged call past the time limit is
re-run job by job, so only the slow job fails); nothing is left ``running``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from redis.exceptions import NoScriptError

from predq.shared.jobstore import codec
from predq.shared.jobstore.keys import DRAIN_BUCKET_S, DRAIN_WINDOW_S, RECENT_BATCHES
from predq.shared.jobstore.scripts import (
    Scripts,
    drain_bucket,
    error_payload,
    lease_seconds,
)
from predq.shared.jobstore.status import JobStatus
from predq.shared.registry.store import Manifest
from predq.shared.settings import Settings
from predq.worker import outputs as render
from predq.worker.batch_metrics import BatchObserver
from predq.worker.batch_report import BatchReport
from predq.worker.model_cache import ModelCache
from predq.worker.timelimit import JobTimeLimit, interruptible, time_limit

log = logging.getLogger("predq.worker")

#: Outcome states, as Celery (and so Flower) names them.
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"


class OutputMismatch(Exception):
    """The model returned a different number of rows than it was given."""


@dataclass
class Job:
    id: str
    model: str
    version: str
    n_rows: int
    inputs: bytes
    webhook: bytes


WebhookFor = Callable[[str, str, bytes], tuple[str, bytes]]
#: One request of a batch: (job_id, model, version, n_rows[, lease token]). The token names
#: the delivery (the message the consumer holds); without one, a fresh token is used.
Request = tuple[str, str, str, int] | tuple[str, str, str, int, str]
#: Claim codes of a job that already ended through another delivery of it.
_ENDED_ELSEWHERE = frozenset({"succeeded", "failed"})


def no_webhook(job_id: str, status: str, webhook: bytes) -> tuple[str, bytes]:
    return "", b""


def _ignore(job_id: str) -> None:
    pass


class BatchPredictor:
    """Runs batches of predict requests against the models in ``cache``."""

    def __init__(self, scripts: Scripts, settings: Settings, cache: ModelCache,
                 webhook_for: WebhookFor = no_webhook,
                 observer: BatchObserver | None = None) -> None:
        self.scripts = scripts
        self.settings = settings
        self.cache = cache
        self.webhook_for = webhook_for
        self.observer = observer
        #: Called with the id of each job the claim failed as poison (its job.failed
        #: webhook; see predq.worker.webhook_delivery.poison_webhook). Must not raise.
        self.on_poison: Callable[[str], None] = _ignore

    def run(self, batch_id: str, requests: list[Request]) -> BatchReport:
        """Predict every request ``(job_id, model, version, n_rows[, token])``; never raises
        for a job."""
        t0 = time.perf_counter()
        report = BatchReport(batch_id)
        groups = self._claim(requests, report)
        finished: list[tuple[str, str, str, bytes, str, bytes]] = []
        for (model, version), jobs in groups.items():
            report.n_jobs += len(jobs)
            report.n_rows += sum(j.n_rows for j in jobs)
            for job, status, fld, payload in self._predict_group(model, version, jobs, report):
                wq, msg = (self.webhook_for(job.id, status, job.webhook) if job.webhook
                           else ("", b""))
                finished.append((job.id, status, fld, payload, wq, msg))
        if finished or report.ended_at_claim:
            self._finish(finished, report)
        elapsed = time.perf_counter() - t0
        for job_id, status, _, payload, _, _ in finished:
            if job_id not in report.outcomes:
                err = None if status == JobStatus.SUCCEEDED else self._event_error(payload)
                report.outcomes[job_id] = (SUCCESS if status == JobStatus.SUCCEEDED else FAILURE,
                                           elapsed, err)
        if self.observer is not None:
            self.observer.log_batch(report, elapsed)
        return report

    def _event_error(self, payload: bytes) -> str:
        """What a failed job's task-failed event (and so Flower) says. An estimator's message
        can quote input values, so it is withheld unless ``log_inputs``; the job's own
        ``error`` (GET /v1/jobs/<id>) always has it."""
        error = orjson.loads(payload)
        if self.settings.log_inputs:
            return f"{error['type']}: {error['message']}"
        return (f"{error['type']} (message withheld: it may quote inputs; read it in the job's "
                "error, or set PREDQ_LOG_INPUTS=true)")

    def _claim(self, requests: list[Request], report: BatchReport
               ) -> dict[tuple[str, str], list[Job]]:
        """Claim the batch's jobs (one round trip); the claimed ones grouped by version."""
        tokens = [str(r[4]) if len(r) > 4 else uuid.uuid4().hex for r in requests]
        claims = self.scripts.claim([r[0] for r in requests], [r[1] for r in requests],
                                    self.settings.max_deliveries, [r[3] for r in requests],
                                    self.settings.result_ttl_s, tokens=tokens,
                                    lease_s=lease_seconds(self.settings.visibility_timeout_s))
        claimed_at = time.time()
        groups: dict[tuple[str, str], list[Job]] = {}
        for pos, (req, claim) in enumerate(zip(requests, claims, strict=True)):
            job_id, model, version, n_rows = req[:4]
            code = claim[0].decode() if isinstance(claim[0], bytes) else claim[0]
            if code == "leased" or code in _ENDED_ELSEWHERE:
                report.duplicates.append(pos)
            elif code == "ok":
                groups.setdefault((model, version), []).append(
                    Job(job_id, model, version, n_rows, claim[1], claim[2]))
                if len(claim) > 3 and claim[3]:
                    report.queue_waits.append(_since(claim[3], claimed_at))
            elif code == "poison":
                report.outcomes[job_id] = (FAILURE, 0.0, "PoisonJob: delivered too many times")
                report.ended_at_claim.append(JobStatus.FAILED)
                self.on_poison(job_id)
            else:
                report.outcomes[job_id] = (REVOKED, 0.0, code)
                if code == "expired":
                    report.ended_at_claim.append(code)
        if report.duplicates:
            log.info("batch %s: skipped %d duplicate deliveries (of jobs another delivery "
                     "runs or ran)", report.batch_id, len(report.duplicates),
                     extra={"batch_id": report.batch_id,
                            "job_ids": [requests[p][0] for p in report.duplicates][:50]})
        return groups

    def _finish(self, finished: list[tuple[str, str, str, bytes, str, bytes]],
                report: BatchReport) -> None:
        """One round trip: every job's final state, plus the batch-size statistics."""
        client = self.scripts.client
        keys = self.scripts.keys
        with client.pipeline(transaction=False) as pipe:
            predicted = [r[0] in report.predicted for r in finished]
            if finished:
                self.scripts.finish(finished, self.settings.result_ttl_s, client=pipe,
                                    predicted=predicted)
            if report.n_jobs:
                pipe.hincrby(keys.batch_stats(), "predict_calls", len(report.calls))
                pipe.hincrby(keys.batch_stats(), "batches", 1)
                pipe.hincrby(keys.batch_stats(), "jobs", report.n_jobs)
                pipe.hincrby(keys.batch_stats(), "rows", report.n_rows)
                pipe.hincrby(keys.batch_stats(), f"jobs_per_batch:{report.n_jobs}", 1)
                pipe.lpush(keys.recent_batches(), f"{report.n_jobs},{report.n_rows}")
                pipe.ltrim(keys.recent_batches(), 0, RECENT_BATCHES - 1)
                bucket = drain_bucket(time.time())
                for model, _, _, rows, _ in report.calls:  # the measured drain rate
                    pipe.hincrby(keys.drain(model), str(bucket), rows)
                    stale = bucket - DRAIN_WINDOW_S // DRAIN_BUCKET_S - 1
                    pipe.hdel(keys.drain(model), str(stale))
                    pipe.expire(keys.drain(model), 2 * DRAIN_WINDOW_S)
            if self.observer is not None:
                self.observer.record(pipe, report, finished)
            try:
                replies = pipe.execute()
            except NoScriptError:  # Redis restarted since the script was loaded
                self.scripts._finish_loaded = False
                replies = [self.scripts.finish(finished, self.settings.result_ttl_s,
                                               predicted=predicted)]
        kept = replies[0] if finished else []
        discarded: list[str] = []
        for (job_id, status, *_), ok in zip(finished, kept, strict=True):
            if not ok:  # cancelled while it ran: the result is discarded
                report.outcomes[job_id] = (REVOKED, 0.0, "cancelled")
                discarded.append(status)
        if discarded and self.observer is not None:
            self.observer.discarded(client, discarded)

    def _predict_group(self, model: str, version: str, jobs: list[Job], report: BatchReport
                       ) -> list[tuple[Job, str, str, bytes]]:
        try:
            manifest, estimator = self.cache.get(model, version)
        except Exception as e:  # any load failure fails exactly this group's jobs
            log.error("cannot load model %s v%s: %s", model, version, e, exc_info=True)
            msg = f"model {model} v{version} could not be loaded: {type(e).__name__}: {e}"
            return [(j, JobStatus.FAILED, "error", error_payload("ModelLoadError", msg))
                    for j in jobs]
        decoded: list[tuple[Job, dict[str, np.ndarray]]] = []
        results: list[tuple[Job, str, str, bytes]] = []
        for j in jobs:
            try:
                n, cols = codec.decode(j.inputs)
                if n != j.n_rows:
                    raise ValueError(f"stored inputs hold {n} rows, message says {j.n_rows}")
                decoded.append((j, cols))
            except Exception as e:
                results.append((j, JobStatus.FAILED, "error", error_payload("BadInputs", str(e))))
        t0 = time.perf_counter()
        report.predicted.update(j.id for j, _ in decoded)
        results += self._limited(manifest, estimator, decoded)
        report.calls.append((model, version, len(decoded), sum(j.n_rows for j, _ in decoded),
                             time.perf_counter() - t0))
        return results

    def _limited(self, manifest: Manifest, estimator: Any,
                 decoded: list[tuple[Job, dict[str, np.ndarray]]]
                 ) -> list[tuple[Job, str, str, bytes]]:
        """Predict under the per-job time limit (``job_time_limit_s``).

        The merged call of the jobs gets the limit; if it runs past it, each job is re-run
        alone under a limit of its own, so that only a job that is slow by itself fails as
        ``TimeLimitExceeded`` and the jobs merged beside it succeed. (Several slow jobs in
        one batch can outlast the batch's hard limit: the process is then replaced and each
        job runs again alone, see predq.worker.batching.consumer.)
        """
        try:
            with time_limit(self.settings.job_time_limit_s):
                return self._bisect(manifest, estimator, decoded)
        except JobTimeLimit as e:
            first = decoded[0][0]
            if len(decoded) > 1:
                log.warning("model %s v%s: %d merged jobs took longer than the time limit; "
                            "re-running them one by one", first.model, first.version,
                            len(decoded))
                out: list[tuple[Job, str, str, bytes]] = []
                for one in decoded:
                    out += self._limited(manifest, estimator, [one])
                return out
            log.warning("job %s of model %s v%s exceeded the time limit: %s", first.id,
                        first.model, first.version, e, extra={"job_id": first.id})
            msg = f"model {first.model} v{first.version}: {e} (PREDQ_JOB_TIME_LIMIT_S)"
            return [(first, JobStatus.FAILED, "error", error_payload("TimeLimitExceeded", msg))]

    def _bisect(self, manifest: Manifest, estimator: Any,
                decoded: list[tuple[Job, dict[str, np.ndarray]]]
                ) -> list[tuple[Job, str, str, bytes]]:
        """Predict all jobs in one call; if it raises, split the jobs in halves and retry."""
        if not decoded:
            return []
        try:
            with interruptible():  # the only code the time limit's alarm may interrupt
                rendered = predict_jobs(manifest, estimator, decoded,
                                        self.settings.max_batch_rows)
        except Exception as e:
            if len(decoded) > 1:
                mid = len(decoded) // 2
                return (self._bisect(manifest, estimator, decoded[:mid])
                        + self._bisect(manifest, estimator, decoded[mid:]))
            job = decoded[0][0]
            # An estimator's message may quote input values: logged only with log_inputs.
            log.warning("job %s failed in predict: %s", job.id,
                        repr(e) if self.settings.log_inputs else type(e).__name__,
                        extra={"job_id": job.id})
            kind = "OutputMismatch" if isinstance(e, OutputMismatch) else "PredictError"
            return [(job, JobStatus.FAILED, "error",
                     error_payload(kind, f"{type(e).__name__}: {e}"[:2000]))]
        return [(j, JobStatus.SUCCEEDED, "outputs", out) for (j, _), out in zip(decoded, rendered,
                                                                       strict=True)]


def _since(created_at: bytes | str, now: float) -> float:
    """Seconds from an ISO-8601 ``created_at`` to ``now`` (0 when unparseable or later)."""
    try:
        text = created_at.decode() if isinstance(created_at, bytes) else created_at
        return max(0.0, now - datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0.0


def build_frame(manifest: Manifest, columns: dict[str, np.ndarray]) -> Any:
    """The model's input: a DataFrame when it was fitted with names, else a float matrix.

    Each column's dtype follows from the manifest alone, never from the values (nor so from
    the other jobs of a batch): a number is float64 (NaN when missing); an integer or
    boolean feature that may be missing is pandas' nullable ``Int64`` / ``boolean`` (values
    exact, missing as ``pd.NA``), else int64 / bool; a string is object (None when missing).
    A float matrix holds missing integers and booleans as NaN.
    """
    names = [f.name for f in manifest.features]
    if manifest.named_features:
        import pandas as pd

        data = {f.name: _frame_column(f.type, _may_be_missing(manifest, f), columns[f.name])
                for f in manifest.features}
        return pd.DataFrame(data, columns=names, copy=False)
    return np.column_stack([_float_column(columns[n]) for n in names])


def _may_be_missing(manifest: Manifest, feature: Any) -> bool:
    return manifest.accepts_missing or not feature.required


def _split_mask(col: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The values in the feature's own dtype and the missing mask of one stacked column
    (a float column, as older API versions stored missing integers, is converted back)."""
    data = np.ma.getdata(col)
    missing = np.ma.getmaskarray(col)
    if data.dtype.kind == "f":
        missing = missing | np.isnan(data)
        data = np.where(missing, 0, data)
    return data.astype(np.int64 if kind == "integer" else bool, copy=False), missing


def _frame_column(kind: str, nullable: bool, col: np.ndarray) -> Any:
    if kind not in ("integer", "boolean"):
        return np.ma.getdata(col)
    data, missing = _split_mask(col, kind)
    if not nullable and not missing.any():
        return data
    import pandas as pd

    if kind == "integer":
        return pd.arrays.IntegerArray(data, missing)
    return pd.arrays.BooleanArray(data, missing)


def _float_column(col: np.ndarray) -> np.ndarray:
    if isinstance(col, np.ma.MaskedArray):
        return np.ma.filled(col.astype(np.float64), np.nan)
    return col.astype(np.float64, copy=False)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """One column of the batch from each job's; masks (missing values) are kept."""
    if any(isinstance(p, np.ma.MaskedArray) for p in parts):
        return np.ma.concatenate(parts)
    return np.concatenate(parts)


def _matrix(manifest: Manifest, columns: dict[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([_float_column(columns[f.name]) for f in manifest.features])


def _labels_follow_proba(estimator: Any) -> bool:
    """Whether ``predict`` is exactly ``classes_[argmax(predict_proba)]`` for this model.

    True for forests, trees and histogram gradient boosting (their ``predict`` is written
    that way in scikit-learn), so one ``predict_proba`` call serves both outputs.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._forest import BaseForest
    from sklearn.pipeline import Pipeline
    from sklearn.tree import BaseDecisionTree

    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    return isinstance(final, BaseForest | BaseDecisionTree | HistGradientBoostingClassifier)


def predict_jobs(manifest: Manifest, estimator: Any,
                 decoded: list[tuple[Job, dict[str, np.ndarray]]], chunk_rows: int
                 ) -> list[bytes]:
    """One vectorized call (chunked at ``chunk_rows``) for all jobs; their outputs as JSON."""
    names = [f.name for f in manifest.features]
    merged = {n: _stack([cols[n] for _, cols in decoded]) for n in names}
    # A runtime that reads a float matrix (treelite on a bare ensemble) skips the DataFrame.
    named = manifest.named_features and getattr(estimator, "wants_frame", True)
    frame: Any = build_frame(manifest, merged) if named else _matrix(manifest, merged)
    total = sum(j.n_rows for j, _ in decoded)
    rows: list[bytes] = []
    for start in range(0, total, chunk_rows):
        part = frame.iloc[start:start + chunk_rows] if named \
            else frame[start:start + chunk_rows]
        rows += _predict_rows(manifest, estimator, part)
    if len(rows) != total:
        raise OutputMismatch(f"the model returned {len(rows)} rows for {total} inputs")
    out: list[bytes] = []
    offset = 0
    for job, _ in decoded:
        out.append(render.join_rows(rows, offset, offset + job.n_rows))
        offset += job.n_rows
    return out


def _predict_rows(manifest: Manifest, estimator: Any, x: Any) -> list[bytes]:
    """One predict call; each output row as JSON bytes."""
    n = x.shape[0]
    if manifest.task == "regression":
        values = np.asarray(estimator.predict(x))
        _check_len(values, n)
        return render.regression_rows(values)
    if not manifest.has_predict_proba:
        labels = np.asarray(estimator.predict(x))
        _check_len(labels, n)
        return render.label_rows(labels)
    proba = np.asarray(estimator.predict_proba(x))
    _check_len(proba, n)
    classes = estimator.classes_
    if _labels_follow_proba(estimator):
        labels = _labels_from_proba(estimator, x, proba, classes, manifest.named_features)
    else:
        labels = np.asarray(estimator.predict(x))
        _check_len(labels, n)
    return render.proba_rows(labels, proba, classes.tolist())


#: Rows whose two highest probabilities are this close are asked of ``predict`` itself.
_TIE_GAP = 1e-9


def _labels_from_proba(estimator: Any, x: Any, proba: np.ndarray, classes: np.ndarray,
                       named: bool) -> np.ndarray:
    """The labels ``predict`` returns, from the probabilities where that is certain.

    ``argmax(predict_proba)`` equals ``predict`` for these models except at a tie: binary
    histogram gradient boosting decides by ``raw > 0``, and a raw score of 1e-17 gives
    exactly [0.5, 0.5], where argmax picks the first class and ``predict`` the second.
    Probabilities are monotone in the raw scores, so only (near-)tied rows can differ:
    those few rows, and only those, go through the model's own ``predict``.
    """
    labels = classes.take(np.argmax(proba, axis=1))
    if proba.ndim != 2 or proba.shape[1] < 2 or proba.shape[0] == 0:
        return labels
    top2 = np.partition(proba, -2, axis=1)[:, -2:]
    tied = np.flatnonzero(top2[:, 1] - top2[:, 0] <= _TIE_GAP)
    if tied.size:
        part = x.iloc[tied] if named else x[tied]
        exact = np.asarray(estimator.predict(part))
        _check_len(exact, tied.size)
        labels = labels.astype(np.result_type(labels.dtype, exact.dtype), copy=False)
        labels[tied] = exact
    return labels


def _check_len(arr: np.ndarray, n: int) -> None:
    if arr.shape[0] != n:
        raise OutputMismatch(f"the model returned {arr.shape[0]} rows for {n} inputs")
