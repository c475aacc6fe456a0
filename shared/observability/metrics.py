"""Every Prometheus metric predq exports, defined once.

Two kinds, by where the numbers live:

- **Process metrics** (:class:`HttpMetrics`): the API's HTTP requests, kept by prometheus_client
  in the API process. When uvicorn runs several processes (``predq api --workers N``),
  ``PROMETHEUS_MULTIPROC_DIR`` is set and prometheus_client's multiprocess mode sums them.
- **Cluster metrics** (the ``Cluster*`` objects below): what the workers do. Workers add to
  counters and histogram buckets in one Redis hash (``Keys.metrics()``) inside the pipeline
  each batch already sends (no extra round trip), and every API replica's ``/metrics`` renders
  that hash together with gauges read from Redis at scrape time (queue depth, live workers);
  the rendering is :mod:`predq.api.observability.exposition`.

Why Redis rather than prometheus_client's multiprocess mode for workers: workers are prefork
pools whose processes come and go, on many machines. A Redis hash aggregates across processes
*and* machines, needs no extra port per worker, and survives worker restarts. The cost is one
HGETALL per scrape.

Hash fields are Prometheus sample names with labels (``name{k="v"}``); histogram buckets are
stored non-cumulative (each observation adds to one bucket) and made cumulative when rendered.
Label values come from validated names (models, versions, queues) or fixed vocabularies.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections import Counter as Tally
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.utils import floatToGoString

from predq.shared.jobstore.keys import Keys
from predq.shared.redis_conn import AsyncPipeline, AsyncRedis, SyncRedis

log = logging.getLogger("predq.metrics")

#: The Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_OUTCOME_RE = re.compile(r"^[a-z0-9_]{1,32}$")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def sample_field(sample: str, labels: Mapping[str, str]) -> str:
    """The hash field of one sample: ``name{k="v",...}`` (labels in the given order)."""
    if not labels:
        return sample
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return f"{sample}{{{inner}}}"


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    """The inverse of :func:`sample_field`."""
    name, brace, rest = raw.partition("{")
    if not brace:
        return name, {}
    return name, {k: _unescape(v) for k, v in _LABEL_RE.findall(rest)}


# -- cluster metrics (Redis-backed) ---------------------------------------------------------


@dataclass(frozen=True)
class ClusterCounter:
    """A counter kept in Redis. ``name`` ends in ``_total``."""

    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()
    #: Label sets rendered as 0 before anything happened (so rate() works from the start).
    initial: tuple[tuple[str, ...], ...] = ()

    @overload
    def inc(self, pipe: AsyncRedis, keys: Keys, amount: float = 1, **labels: str
            ) -> Awaitable[float]: ...

    @overload
    def inc(self, pipe: SyncRedis, keys: Keys, amount: float = 1, **labels: str) -> float: ...

    def inc(self, pipe: SyncRedis | AsyncRedis, keys: Keys, amount: float = 1, **labels: str
            ) -> Awaitable[float] | float:
        """``HINCRBY`` (or ``HINCRBYFLOAT``) on ``pipe``: a pipeline, a client, or an asyncio
        client (then await the returned value)."""
        fld = sample_field(self.name, {k: labels[k] for k in self.labelnames})
        if isinstance(amount, int):
            return pipe.hincrby(keys.metrics(), fld, amount)
        return pipe.hincrbyfloat(keys.metrics(), fld, amount)


@dataclass(frozen=True)
class ClusterHistogram:
    """A histogram kept in Redis (non-cumulative buckets, ``_sum`` and ``_count``)."""

    name: str
    documentation: str
    buckets: tuple[float, ...]
    labelnames: tuple[str, ...] = ()
    #: The ``le`` label of each bucket, as Prometheus prints it ("0.005", "1.0", "1e+06").
    bounds: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(floatToGoString(b) for b in self.buckets))

    def bucket_of(self, value: float) -> str:
        """The ``le`` of the smallest bucket holding ``value``."""
        i = bisect.bisect_left(self.buckets, value)
        return self.bounds[i] if i < len(self.bounds) else "+Inf"

    def observe(self, pipe: SyncRedis | AsyncPipeline, keys: Keys, values: Iterable[float],
                **labels: str) -> None:
        """Queue the commands recording ``values``: one HINCRBY per bucket touched, plus sum
        and count. Nothing is queued for no values. Not an asyncio client: nothing awaits."""
        base = {k: labels[k] for k in self.labelnames}
        tally: Tally[str] = Tally()
        total = 0.0
        for v in values:
            tally[self.bucket_of(v)] += 1
            total += v
        if not tally:
            return
        key = keys.metrics()
        for le, n in tally.items():
            pipe.hincrby(key, sample_field(f"{self.name}_bucket", {**base, "le": le}), n)
        pipe.hincrbyfloat(key, sample_field(f"{self.name}_sum", base), total)
        pipe.hincrby(key, sample_field(f"{self.name}_count", base), sum(tally.values()))


_FINAL = ("succeeded", "failed", "cancelled", "expired")
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0)

JOBS_FINISHED = ClusterCounter(
    "predq_jobs_finished_total", "Jobs that reached a final status, by status.",
    ("status",), initial=tuple((s,) for s in _FINAL))
QUEUE_WAIT = ClusterHistogram(
    "predq_queue_wait_seconds",
    "Time from a job's submission to the start of the batch that claimed it.",
    (*_SECONDS, 120.0, 300.0, 900.0))
BATCH_JOBS = ClusterHistogram(
    "predq_batch_jobs", "Jobs merged into one micro-batch.",
    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
BATCH_ROWS = ClusterHistogram(
    "predq_batch_rows", "Input rows in one micro-batch.",
    (1, 10, 100, 1_000, 5_000, 20_000, 100_000, 1_000_000))
PREDICT_DURATION = ClusterHistogram(
    "predq_predict_duration_seconds",
    "Duration of the vectorized predict call(s) for one model version in one batch.",
    (0.0005, *_SECONDS), ("model", "version"))
PREDICT_ROWS = ClusterCounter(
    "predq_predict_rows_total", "Rows predicted, by model version.", ("model", "version"))
CACHE_LOADS = ClusterCounter(
    "predq_model_cache_loads_total",
    "Model loads from the registry (cache misses); a model a worker preloads counts once, "
    "not once per pool process.", ("model", "version"))
CACHE_HITS = ClusterCounter(
    "predq_model_cache_hits_total",
    "Batches served by a model already loaded in the worker process.", ("model", "version"))
MODEL_LOAD_SECONDS = ClusterCounter(
    "predq_model_load_seconds_total", "Seconds spent loading models (sha256 check, unpickling).")
WEBHOOK_DELIVERIES = ClusterCounter(
    "predq_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, retry, failed, ...).",
    ("outcome",), initial=(("delivered",), ("retry",), ("failed",)))
WEBHOOK_DURATION = ClusterHistogram(
    "predq_webhook_delivery_duration_seconds", "Duration of one webhook delivery attempt.",
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

# Batch files (predq.worker.batchfiles.chunks): rows and chunks of batches, and how batches end.
BATCH_FILE_ROWS = ClusterCounter(
    "predq_batch_file_rows_total",
    "Rows of batch files handled, by model and outcome (done: in the output; failed: in the "
    "error file).", ("model", "outcome"))
BATCH_FILE_CHUNKS = ClusterCounter(
    "predq_batch_file_chunks_total", "Batch-file chunks finished, by model.", ("model",))
BATCH_FILE_CHUNK_SECONDS = ClusterHistogram(
    "predq_batch_file_chunk_duration_seconds",
    "Duration of one batch-file chunk (read, validate, predict, write).",
    (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0))
BATCHES_FINISHED = ClusterCounter(
    "predq_batch_files_finished_total", "Batches that ended, by status.", ("status",),
    initial=(("succeeded",), ("failed",), ("cancelled",)))

CLUSTER_METRICS: tuple[ClusterCounter | ClusterHistogram, ...] = (
    JOBS_FINISHED, QUEUE_WAIT, BATCH_JOBS, BATCH_ROWS, PREDICT_DURATION, PREDICT_ROWS,
    CACHE_LOADS, CACHE_HITS, MODEL_LOAD_SECONDS, WEBHOOK_DELIVERIES, WEBHOOK_DURATION,
    BATCH_FILE_ROWS, BATCH_FILE_CHUNKS, BATCH_FILE_CHUNK_SECONDS, BATCHES_FINISHED,
)


def record_webhook(pipe_or_client: SyncRedis | None, keys: Keys, outcome: str,
                   seconds: float | None = None) -> None:
    """Count one webhook delivery attempt; never raises.

    Pass the pipeline you already execute (no extra round trip) or a sync client. ``outcome``
    is a short lowercase word (``delivered``, ``retry``, ``failed``, ...); anything
    else is counted as ``other``. ``None`` as ``pipe_or_client`` is a no-op.
    """
    if pipe_or_client is None:
        return
    if not _OUTCOME_RE.fullmatch(outcome):
        outcome = "other"
    try:
        WEBHOOK_DELIVERIES.inc(pipe_or_client, keys, outcome=outcome)
        if seconds is not None:
            WEBHOOK_DURATION.observe(pipe_or_client, keys, [max(0.0, seconds)])
    except Exception as e:  # metrics never break a delivery
        log.debug("could not record a webhook metric: %r", e)


# -- gauges computed at scrape time (rendered by predq.api.observability.exposition)
# --------------------------------


@dataclass(frozen=True)
class ScrapeGauge:
    """A gauge the API reads from Redis when scraped (nothing increments it)."""

    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()


QUEUE_DEPTH = ScrapeGauge("predq_queue_depth", "Messages waiting in a queue (all priorities).",
                          ("queue",))
WORKERS_ALIVE = ScrapeGauge("predq_workers_alive", "Workers whose heartbeat is recent.")
BROKER_UNACKED = ScrapeGauge(
    "predq_broker_unacked_messages",
    "Messages delivered to workers and not yet acknowledged (buffered or running).")
REDIS_UP = ScrapeGauge("predq_redis_up", "Whether Redis answered this scrape.")


# -- process metrics (the API) ------------------------------------------------------------------

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HttpMetrics:
    """The API process's HTTP metrics, on a registry of its own (one per app instance)."""

    def __init__(self) -> None:
        # No *_created series: they double the output and dashboards do not use them.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "predq_http_requests", "HTTP requests, by method, route template and status code.",
            ("method", "route", "status"), registry=self.registry)
        self.duration = Histogram(
            "predq_http_request_duration_seconds",
            "HTTP request latency (to the last body byte), by method and route template.",
            ("method", "route"), buckets=HTTP_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        if not self.multiprocess():
            from prometheus_client import PlatformCollector, ProcessCollector

            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    @staticmethod
    def multiprocess() -> bool:
        """Whether prometheus_client runs in multiprocess mode (several uvicorn workers)."""
        return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        # The labelled children, looked up once per label set (the sets are bounded: route
        # templates, not paths).
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.requests.labels(method, route, str(status)),
                    self.duration.labels(method, route))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        """This process's metrics, or, in multiprocess mode, those of all API processes."""
        if self.multiprocess():
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


# -- broker lists ---------------------------------------------------------------------------------

#: kombu's Redis transport keeps messages of priority n > 0 in ``<queue>\x06\x16<n>``.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
#: kombu's hash of delivered, unacknowledged messages (its default ``unacked_key``).
UNACKED_KEY = "unacked"


def broker_lists(queue: str) -> list[str]:
    """The Redis lists holding ``queue``'s waiting messages, every priority included."""
    return [queue, *(f"{queue}{PRIORITY_SEP}{n}" for n in PRIORITY_STEPS)]
