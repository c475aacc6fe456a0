"""The Celery application of the workers: ``create_app(settings)``.

Nothing is built at import time: ``predq worker`` builds the app from the settings and
starts it; the prefork pool's processes inherit it by fork and create their own Redis
client and model cache on first use.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from celery import Celery, signals
from kombu import Queue

from predq.shared.jobstore.keys import Keys
from predq.shared.jobstore.messages import PREDICT_TASK
from predq.shared.jobstore.scripts import Scripts, lease_seconds
from predq.shared.redis_conn import celery_transport_options, sync_client
from predq.shared.registry.store import Registry
from predq.shared.settings import Settings
from predq.worker.batch_metrics import BatchObserver
from predq.worker.batchfiles.lane import register_batch_tasks
from predq.worker.batching.consumer import PredictBatches
from predq.worker.batching.transport import transport_for
from predq.worker.lifecycle import install_lifecycle, node_name
from predq.worker.model_cache import ModelCache
from predq.worker.predict import BatchPredictor
from predq.worker.reaper import reap
from predq.worker.store_failures import record as record_store_failure
from predq.worker.webhook_delivery import poison_webhook, webhook_for
from predq.worker.webhook_task import register_webhook_task

log = logging.getLogger("predq.worker")


class _ProcessState:
    """Per-process resources, created after fork (a Redis connection must not be shared)."""

    def __init__(self) -> None:
        self.pid = -1
        self.predictor: BatchPredictor | None = None
        self.main_client: Any = None  # the consumer process's own client (the reaper)
        self.lease_scripts: Scripts | None = None  # the consumer's, for claim leases
        self.cache: ModelCache | None = None

    def preload(self, settings: Settings, queues: set[str] | None) -> None:
        """Load the default version of every model this worker serves, in the main process
        before the pool forks: the pool processes inherit them (copy-on-write, one load,
        shared pages), so the first job after a start does not pay for the import and load.
        Errors are logged; a model that cannot load fails its own jobs later, clearly."""
        registry = Registry(settings.registry_root)
        self.cache = ModelCache(registry, settings.model_cache_size)
        try:
            infos = registry.list_models()
        except Exception as e:
            log.warning("cannot list the registry %s to preload models: %s", registry.root, e)
            return
        log.info("model registry %s: %d model(s)", registry.root, len(infos))
        # Counted here, once per worker: the pool processes inherit these models and their
        # observers count only what they load themselves (predq_model_cache_loads_total).
        observer = BatchObserver(Keys(settings.key_prefix), self.cache)
        for info in infos[: settings.model_cache_size]:
            if queues is not None and settings.queue_for(info.name) not in queues:
                continue
            try:
                before = self.cache.stats.load_seconds
                self.cache.get(info.name, info.default_version)
                log.info("preloaded model %s v%s in %.4f s", info.name, info.default_version,
                         self.cache.stats.load_seconds - before)
            except Exception as e:
                log.warning("could not preload model %s v%s: %s", info.name,
                            info.default_version, e)
        client = sync_client(settings, socket_timeout=5, socket_connect_timeout=5)
        try:
            observer.report_cache(client)
        finally:
            client.close()

    def leases(self, settings: Settings) -> Scripts:
        """The consumer's job-store scripts (lease renewals and releases); short timeouts,
        as they run on the consumer's event loop."""
        if self.lease_scripts is None:
            client = sync_client(settings, socket_timeout=1.0, socket_connect_timeout=1.0)
            self.lease_scripts = Scripts(client, Keys(settings.key_prefix))
        return self.lease_scripts

    def get(self, settings: Settings) -> BatchPredictor:
        if self.predictor is None or self.pid != os.getpid():
            client = sync_client(settings, health_check_interval=30,
                                 socket_keepalive=True, retry_on_timeout=True)
            if self.cache is None:
                self.cache = ModelCache(Registry(settings.registry_root),
                                        settings.model_cache_size)
            cache = self.cache
            keys = Keys(settings.key_prefix)
            self.predictor = BatchPredictor(Scripts(client, keys),
                                            settings, cache, webhook_for=webhook_for(settings),
                                            observer=BatchObserver(keys, cache, node_name()))
            self.predictor.on_poison = poison_webhook(client, settings)
            self.pid = os.getpid()
        return self.predictor


def prefetch_multiplier(settings: Settings, concurrency: int | None = None) -> int:
    """Enough prefetched messages to fill a batch per pool process and one more buffering,
    for a pool of ``concurrency`` processes (default: ``settings.worker_concurrency``)."""
    n = concurrency or settings.worker_concurrency
    return max(1, math.ceil(settings.max_batch_jobs * (n + 1) / n))


def create_app(settings: Settings) -> Celery:
    """The workers' Celery app, with the predict task registered."""
    app = Celery("predq", broker=settings.redis_url, set_as_current=True)
    # Several messages per Redis round trip (predq.worker.batching.transport), unless
    # PREDQ_WORKER_FETCH_MAX=1 or the URL is one the fetch does not handle (rediss://).
    transport = transport_for(settings.redis_url) if settings.worker_fetch_max > 1 else None
    queues = [Queue(q, routing_key=q) for q in settings.all_predict_queues()]
    queues.append(Queue(settings.webhook_queue, routing_key=settings.webhook_queue))
    queues += [Queue(q, routing_key=q) for q in settings.all_batch_queues()]
    app.conf.update(
        task_default_queue=settings.default_queue,
        task_queues=queues,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        # A global hard limit makes billiard run its timeout handler (per-batch limits).
        task_time_limit=settings.batch_time_limit_s,
        worker_prefetch_multiplier=prefetch_multiplier(settings),
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        **({"broker_transport": transport} if transport else {}),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for unacked messages of dead workers every few seconds (kombu's default
            # is 10 s x throttle 10 = ~100 s, whatever the visibility timeout), so recovery
            # takes about visibility_timeout_s, as documented.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 5)),
            "unacked_restore_throttle": 1,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "fetch_max": settings.worker_fetch_max,
            # Only the predict queues: the batch lane holds no more messages than its budget.
            "fetch_queues": settings.all_predict_queues(),
            **celery_transport_options(settings),
        },
        accept_content=["json"],
        task_serializer="json",
        enable_utc=True,
    )
    state = _ProcessState()

    class PredictTask(PredictBatches):
        max_batch_jobs = settings.max_batch_jobs
        max_batch_rows = settings.max_batch_rows
        max_wait_s = settings.max_wait_ms / 1000.0
        # The soft limit (SIGALRM in predq.worker.timelimit) fails a slow model's jobs and keeps
        # the process; this hard limit only replaces a process stuck inside one C call.
        batch_time_limit = settings.batch_time_limit_s
        reap_interval_s = settings.reaper_interval_s
        # A claim's lease lives lease_seconds(); the consumer renews those of the jobs in
        # flight four times as often, so a live worker's never lapse.
        lease_renew_s = lease_seconds(settings.visibility_timeout_s) / 4

        def reap(self) -> None:
            if state.main_client is None:
                state.main_client = sync_client(settings, socket_timeout=5)
            reap(state.main_client, Keys(settings.key_prefix), settings)

        def renew_leases(self, leases: list[tuple[str, str]]) -> None:
            state.leases(settings).renew(leases, lease_seconds(settings.visibility_timeout_s))

        def release_leases(self, leases: list[tuple[str, str]]) -> bool:
            state.leases(settings).release(leases)
            return True

        def run_batch(self, batch_id: str, requests: list[Any]) -> dict[str, Any]:
            report = state.get(settings).run(batch_id, requests)
            return {"outcomes": report.outcomes, "n_jobs": report.n_jobs,
                    "n_rows": report.n_rows, "calls": report.calls,
                    "duplicates": report.duplicates}

        def on_batch_failure(self, batch_id: str, job_ids: list[str], reason: str) -> None:
            record_store_failure(state.get(settings).scripts.client, Keys(settings.key_prefix),
                                 job_ids, reason)

    @app.task(base=PredictTask, name=PREDICT_TASK, bind=True, acks_late=True)
    def predict(self: Any, requests: Any) -> None:  # pragma: no cover - never called directly
        raise RuntimeError("predq.predict runs through the batching strategy only")

    def size_prefetch(sender: Any = None, **_: Any) -> None:
        # The pool really started (``predq worker -c N``, celery's --concurrency) may differ
        # from settings.worker_concurrency: size the prefetch from it, before the consumer
        # bootstep reads the multiplier.
        if getattr(sender, "app", None) is app and getattr(sender, "concurrency", None):
            sender.prefetch_multiplier = prefetch_multiplier(settings, int(sender.concurrency))

    signals.worker_init.connect(size_prefetch, weak=False, dispatch_uid=f"predq.prefetch.{id(app)}")

    if settings.preload_models:
        def on_worker_init(sender: Any = None, **_: Any) -> None:
            consume = getattr(getattr(app.amqp, "queues", None), "consume_from", None)
            state.preload(settings, set(consume) if consume else None)

        signals.celeryd_after_setup.connect(on_worker_init, weak=False,
                                          dispatch_uid="predq.preload")

    register_webhook_task(app, settings)
    register_batch_tasks(app, settings, cache_of=lambda: state.get(settings).cache)
    install_lifecycle(app, settings)
    app.predq_settings = settings  # type: ignore[attr-defined]
    return app
