"""What one batch tells the operators: its metrics and its log line.

:class:`BatchObserver` turns a :class:`predq.worker.batch_report.BatchReport` into Redis commands
queued on the batch's finish pipeline (so metrics cost no extra round trip) and into one log line
per batch carrying the batch id and the ids of its jobs, so that a job can be followed from the
API's request line to the batch that ran it. It never raises into the batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from predq.shared.jobstore.keys import Keys
from predq.shared.observability import metrics as m
from predq.shared.redis_conn import SyncPipeline, SyncRedis
from predq.worker.batch_report import BatchReport

if TYPE_CHECKING:
    from predq.worker.model_cache import ModelCache

log = logging.getLogger("predq.worker.batch")

#: The batch log line lists at most this many job ids (and says how many it left out).
MAX_LOGGED_JOB_IDS = 512

Finished = list[tuple[str, str, str, bytes, str, bytes]]


class BatchObserver:
    """Records metrics and logs for the batches of one pool process."""

    def __init__(self, keys: Keys, cache: ModelCache | None = None,
                 hostname: str | None = None) -> None:
        self.keys = keys
        self.cache = cache
        self.hostname = hostname
        # What the cache already holds was counted by whoever loaded it: a pool process
        # inherits the models its worker preloaded before the fork (counted once, there, by
        # report_cache), and must not count them again.
        stats = cache.stats if cache is not None else None
        self._cache_seen: dict[tuple[str, str], tuple[int, int]] = {
            k: (v[0], v[1]) for k, v in (stats.by_model.items() if stats else ())}
        self._load_seconds_seen = stats.load_seconds if stats else 0.0

    def record(self, pipe: SyncPipeline, report: BatchReport, finished: Finished) -> None:
        """Queue the batch's metric commands on ``pipe`` (executed with the batch's results)."""
        try:
            self._record(pipe, report, finished)
        except Exception as e:  # metrics never fail a batch
            log.warning("could not record the metrics of batch %s: %r", report.batch_id, e)

    def _record(self, pipe: SyncPipeline, report: BatchReport, finished: Finished) -> None:
        keys = self.keys
        statuses: dict[str, int] = {}
        for _, status, *_ in finished:
            statuses[status] = statuses.get(status, 0) + 1
        for status in report.ended_at_claim:
            statuses[status] = statuses.get(status, 0) + 1
        for status, n in statuses.items():
            m.JOBS_FINISHED.inc(pipe, keys, n, status=status)
        m.QUEUE_WAIT.observe(pipe, keys, report.queue_waits)
        if report.n_jobs:
            m.BATCH_JOBS.observe(pipe, keys, [report.n_jobs])
            m.BATCH_ROWS.observe(pipe, keys, [report.n_rows])
        for model, version, _jobs, rows, seconds in report.calls:
            if rows:
                m.PREDICT_DURATION.observe(pipe, keys, [seconds], model=model, version=version)
                m.PREDICT_ROWS.inc(pipe, keys, rows, model=model, version=version)
        self._record_cache(pipe)

    def _record_cache(self, pipe: SyncPipeline) -> None:
        """Add what the model cache did since the last batch (its counters are cumulative)."""
        if self.cache is None:
            return
        stats = self.cache.stats
        for (model, version), (loads, hits) in list(stats.by_model.items()):
            seen_loads, seen_hits = self._cache_seen.get((model, version), (0, 0))
            if loads > seen_loads:
                m.CACHE_LOADS.inc(pipe, self.keys, loads - seen_loads, model=model,
                                  version=version)
            if hits > seen_hits:
                m.CACHE_HITS.inc(pipe, self.keys, hits - seen_hits, model=model,
                                 version=version)
            self._cache_seen[(model, version)] = (loads, hits)
        if stats.load_seconds > self._load_seconds_seen:
            m.MODEL_LOAD_SECONDS.inc(pipe, self.keys,
                                     float(stats.load_seconds - self._load_seconds_seen))
            self._load_seconds_seen = stats.load_seconds

    def report_cache(self, client: SyncRedis) -> None:
        """Send what the model cache did since this observer last looked, in its own round
        trip (the worker's preload, which runs before any batch). Errors are logged."""
        try:
            with client.pipeline(transaction=False) as pipe:
                self._record_cache(pipe)
                pipe.execute()
        except Exception as e:
            log.warning("could not record the model loads: %r", e)

    def discarded(self, client: SyncRedis, statuses: list[str]) -> None:
        """Jobs whose result was discarded (cancelled while they ran) were counted with the
        status they would have had; the API counted their cancellation. Take ours back.

        Rare, so the extra round trip is acceptable; errors are logged, never raised.
        """
        if not statuses:
            return
        try:
            with client.pipeline(transaction=False) as pipe:
                for status in statuses:
                    m.JOBS_FINISHED.inc(pipe, self.keys, -1, status=status)
                pipe.execute()
        except Exception as e:
            log.warning("could not correct the job counters: %r", e)

    def log_batch(self, report: BatchReport, seconds: float) -> None:
        """One INFO line for the batch: ids, sizes, per-model calls, outcomes, job ids."""
        if not report.outcomes or not log.isEnabledFor(logging.INFO):
            return
        states: dict[str, int] = {}
        for state, _, _ in report.outcomes.values():
            states[state] = states.get(state, 0) + 1
        job_ids = list(report.outcomes)
        extra: dict[str, Any] = {
            "batch_id": report.batch_id, "jobs": report.n_jobs, "rows": report.n_rows,
            "seconds": round(seconds, 4), "outcomes": states,
            "calls": [{"model": mo, "version": v, "jobs": j, "rows": r, "seconds": round(s, 4)}
                      for mo, v, j, r, s in report.calls],
            "job_ids": job_ids[:MAX_LOGGED_JOB_IDS],
        }
        if len(job_ids) > MAX_LOGGED_JOB_IDS:
            extra["job_ids_omitted"] = len(job_ids) - MAX_LOGGED_JOB_IDS
        if self.hostname:
            extra["worker"] = self.hostname
        models = ",".join(sorted({f"{mo}:{v}" for mo, v, *_ in report.calls})) or "-"
        log.info("batch %s: %d jobs, %d rows, %s, %.1fms", report.batch_id, report.n_jobs,
                 report.n_rows, models, seconds * 1000, extra=extra)
