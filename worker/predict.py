"""The micro-batch: many queued jobs, one vectorized predict call per model version.

Framework-free: :meth:`BatchPredictor.run` takes plain request tuples, talks to Redis in two
round trips (claim, finish) whatever the batch size, and returns what happened to each job.
Invariants: every job handed in gets exactly one outcome; ``len(outputs) == len(inputs)`` is
checked per call; a failure fails only the jobs it touches (a raising batch is bisected, so
one poison row fails its own job and not its neighbours); nothing is left ``running``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from redis.exceptions import NoScriptError

from shared import codec
from shared.keys import DRAIN_BUCKET_S, DRAIN_WINDOW_S, RECENT_BATCHES
from shared.registry import Manifest
from shared.settings import Settings
from shared.store import FAILED, SUCCEEDED, Scripts, drain_bucket, error_payload
from worker import render
from worker.batch_report import BatchReport
from worker.cache import ModelCache
from worker.observe import BatchObserver
from worker.timelimit import JobTimeLimit, time_limit

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
        #: webhook; see worker.delivery.poison_webhook). Must not raise.
        self.on_poison: Callable[[str], None] = _ignore

    def run(self, batch_id: str, requests: list[tuple[str, str, str, int]]) -> BatchReport:
        """Predict every request ``(job_id, model, version, n_rows)``; never raises for a job."""
        t0 = time.perf_counter()
        report = BatchReport(batch_id)
        claims = self.scripts.claim([r[0] for r in requests], [r[1] for r in requests],
                                    self.settings.max_deliveries, [r[3] for r in requests],
                                    self.settings.result_ttl_s)
        claimed_at = time.time()
        groups: dict[tuple[str, str], list[Job]] = {}
        for (job_id, model, version, n_rows), claim in zip(requests, claims, strict=True):
            code = claim[0].decode() if isinstance(claim[0], bytes) else claim[0]
            if code == "ok":
                groups.setdefault((model, version), []).append(
                    Job(job_id, model, version, n_rows, claim[1], claim[2]))
                if len(claim) > 3 and claim[3]:
                    report.queue_waits.append(_since(claim[3], claimed_at))
            elif code == "poison":
                report.outcomes[job_id] = (FAILURE, 0.0, "PoisonJob: delivered too many times")
                report.ended_at_claim.append(FAILED)
                self.on_poison(job_id)
            else:
                report.outcomes[job_id] = (REVOKED, 0.0, code)
                if code == "expired":
                    report.ended_at_claim.append(code)
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
                err = None if status == SUCCEEDED else orjson.loads(payload)["message"]
                report.outcomes[job_id] = (SUCCESS if status == SUCCEEDED else FAILURE,
                                           elapsed, err)
        if self.observer is not None:
            self.observer.log_batch(report, elapsed)
        return report

    def _finish(self, finished: list[tuple[str, str, str, bytes, str, bytes]],
                report: BatchReport) -> None:
        """One round trip: every job's final state, plus the batch-size statistics."""
        client = self.scripts.client
        keys = self.scripts.keys
        with client.pipeline(transaction=False) as pipe:
            if finished:
                self.scripts.finish(finished, self.settings.result_ttl_s, client=pipe)
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
                replies = [self.scripts.finish(finished, self.settings.result_ttl_s)]
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
            return [(j, FAILED, "error", error_payload("ModelLoadError", msg)) for j in jobs]
        decoded: list[tuple[Job, dict[str, np.ndarray]]] = []
        results: list[tuple[Job, str, str, bytes]] = []
        for j in jobs:
            try:
                n, cols = codec.decode(j.inputs)
                if n != j.n_rows:
                    raise ValueError(f"stored inputs hold {n} rows, message says {j.n_rows}")
                decoded.append((j, cols))
            except Exception as e:
                results.append((j, FAILED, "error", error_payload("BadInputs", str(e))))
        t0 = time.perf_counter()
        try:
            with time_limit(self.settings.job_time_limit_s):
                results += self._bisect(manifest, estimator, decoded)
        except JobTimeLimit as e:
            log.warning("model %s v%s exceeded the time limit: %s", model, version, e)
            done = {j.id for j, *_ in results}
            msg = f"model {model} v{version}: {e} (PREDQ_JOB_TIME_LIMIT_S)"
            results += [(j, FAILED, "error", error_payload("TimeLimitExceeded", msg))
                        for j, _ in decoded if j.id not in done]
        report.calls.append((model, version, len(decoded), sum(j.n_rows for j, _ in decoded),
                             time.perf_counter() - t0))
        return results

    def _bisect(self, manifest: Manifest, estimator: Any,
                decoded: list[tuple[Job, dict[str, np.ndarray]]]
                ) -> list[tuple[Job, str, str, bytes]]:
        """Predict all jobs in one call; if it raises, split the jobs in halves and retry."""
        if not decoded:
            return []
        try:
            rendered = predict_jobs(manifest, estimator, decoded, self.settings.max_batch_rows)
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
            return [(job, FAILED, "error",
                     error_payload(kind, f"{type(e).__name__}: {e}"[:2000]))]
        return [(j, SUCCEEDED, "outputs", out) for (j, _), out in zip(decoded, rendered,
                                                                       strict=True)]


def _since(created_at: bytes | str, now: float) -> float:
    """Seconds from an ISO-8601 ``created_at`` to ``now`` (0 when unparseable or later)."""
    try:
        text = created_at.decode() if isinstance(created_at, bytes) else created_at
        return max(0.0, now - datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0.0


def build_frame(manifest: Manifest, columns: dict[str, np.ndarray]) -> Any:
    """The model's input: a DataFrame when it was fitted with names, else a float matrix."""
    names = [f.name for f in manifest.features]
    if manifest.named_features:
        import pandas as pd

        return pd.DataFrame({n: columns[n] for n in names}, columns=names, copy=False)
    return np.column_stack([columns[n].astype(np.float64, copy=False) for n in names])


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
    merged = {n: np.concatenate([cols[n] for _, cols in decoded]) for n in names}
    frame = build_frame(manifest, merged)
    total = sum(j.n_rows for j, _ in decoded)
    rows: list[bytes] = []
    for start in range(0, total, chunk_rows):
        part = frame.iloc[start:start + chunk_rows] if manifest.named_features \
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
        labels = classes.take(np.argmax(proba, axis=1))
    else:
        labels = np.asarray(estimator.predict(x))
        _check_len(labels, n)
    return render.proba_rows(labels, proba, classes.tolist())


def _check_len(arr: np.ndarray, n: int) -> None:
    if arr.shape[0] != n:
        raise OutputMismatch(f"the model returned {arr.shape[0]} rows for {n} inputs")
