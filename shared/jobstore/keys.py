"""Every Redis key predq writes, and every TTL, defined once.

All these keys start with the settings' ``key_prefix``. Celery's queues (named by the queue
settings) and kombu's ``unacked``/``unacked_index``/``unacked_mutex`` keys are not prefixed,
and kombu's restore sweep reads ``unacked`` whole: so one deployment per Redis database.
(Test sessions share one Redis by giving each test its own prefix *and* queue names.)
"""

from __future__ import annotations

from dataclasses import dataclass

#: Channel on which workers publish the ids of jobs that reached a terminal state;
#: the API's long-poll waiters listen on it.
DONE_CHANNEL = "done"

#: How long an Idempotency-Key maps to its job: as long as the job itself is kept.
#: (The TTL is the settings' ``result_ttl_s``; no other TTL exists.)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    def job(self, job_id: str) -> str:
        """Hash of one job: status, timestamps, inputs (until done), outputs, error."""
        return f"{self.prefix}:job:{job_id}"

    def idempotency(self, owner: str, key: str) -> str:
        """String: the job id created for (owner, Idempotency-Key)."""
        return f"{self.prefix}:idem:{owner}:{key}"

    def done_channel(self) -> str:
        """Pub/sub channel carrying the ids of jobs that just ended."""
        return f"{self.prefix}:{DONE_CHANNEL}"

    def batch_stats(self) -> str:
        """Hash of batch statistics (histogram of jobs per predict call) for operators/tests."""
        return f"{self.prefix}:stats:batches"

    def recent_batches(self) -> str:
        """List of the last batch sizes, newest first, capped (see RECENT_BATCHES)."""
        return f"{self.prefix}:stats:recent_batches"

    def queued_rows(self, model: str) -> str:
        """Counter of rows queued and not yet started for one model (backpressure)."""
        return f"{self.prefix}:qrows:{model}"

    def unqueued(self, job_id: str) -> str:
        """Mark: this job was cancelled while queued and its rows already left
        ``queued_rows`` (so the claim of its message must not take them off again). The
        claim script builds this name from the job's key: keep the two in step."""
        return f"{self.prefix}:unqueued:{job_id}"

    def drain(self, model: str) -> str:
        """Hash of rows finished per 10-second bucket for one model: its measured drain rate,
        for Retry-After and ETAs. Buckets older than DRAIN_WINDOW_S are deleted as it goes."""
        return f"{self.prefix}:drain:{model}"

    def seq(self, model: str) -> str:
        """Counter: the sequence number of the last job submitted for one model."""
        return f"{self.prefix}:seq:{model}"

    def claimed_seq(self, model: str) -> str:
        """The highest sequence number a worker has claimed for one model (queue position)."""
        return f"{self.prefix}:claimed:{model}"

    def lease(self, job_id: str) -> str:
        """String (expires): the token of the delivery predicting a running job. While it
        lives, another delivery of the job is a duplicate: skipped, not predicted or counted.
        Set by the claim, renewed by the worker's consumer, deleted when the job ends."""
        return f"{self.prefix}:lease:{job_id}"

    def queued(self) -> str:
        """Sorted set of queued job ids (score: submit time), scanned by the reaper."""
        return f"{self.prefix}:queued"

    def running(self) -> str:
        """Sorted set of running job ids (score: claim time), scanned by the reaper."""
        return f"{self.prefix}:running"

    def reaper_lock(self) -> str:
        """Lock so that one worker at a time reaps stuck jobs."""
        return f"{self.prefix}:lock:reaper"

    def webhook_dead(self) -> str:
        """Sorted set of job ids whose webhook exhausted its attempts (dead letters)."""
        return f"{self.prefix}:webhook:dead"

    def webhook_due(self) -> str:
        """Sorted set of unfinished webhook deliveries ``<job_id>|<event>``, scored by the
        Unix time of the next attempt or of the in-flight attempt's lease (see
        predq.shared.webhooks.state)."""
        return f"{self.prefix}:webhook:due"

    def workers_alive(self) -> str:
        """Sorted set of worker heartbeats (score: unix time), read by /readyz."""
        return f"{self.prefix}:workers"

    def worker_info(self, hostname: str) -> str:
        """String (JSON) describing one live worker: queues, pid, load; expires on its own
        after WORKER_INFO_TTL_BEATS heartbeats without renewal."""
        return f"{self.prefix}:worker:{hostname}"

    def metrics(self) -> str:
        """Hash of the cluster-wide Prometheus counters and histogram buckets that workers
        increment (field: sample name and labels; see predq.shared.observability.metrics)."""
        return f"{self.prefix}:metrics"

    def rate_limit_prefix(self) -> str:
        """Prefix of the ``limits`` library's rate-limit counters (one per key and window;
        each expires with its window). See predq.api.security.ratelimit."""
        return f"{self.prefix}:ratelimit"

    # -- batch files (predq.shared.batchfiles.filestore, predq.shared.batchfiles.batchstore)
    # --------------------------------------
    def file(self, file_id: str) -> str:
        """Hash of one stored file: owner, format, bytes, sha256, columns, rows, expiry."""
        return f"{self.prefix}:file:{file_id}"

    def files_expiry(self) -> str:
        """Sorted set of file and batch ids (score: unix expiry), swept to free the disk."""
        return f"{self.prefix}:files:expiry"

    def batch(self, batch_id: str) -> str:
        """Hash of one batch: status, model, version, counts, chunk bookkeeping."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_done_chunks(self, batch_id: str) -> str:
        """Set of the chunk numbers of a batch that finished (counted exactly once)."""
        return f"{self.prefix}:batch:{batch_id}:done"

    def batches_of(self, owner: str) -> str:
        """Sorted set of an owner's batch ids (score: creation time), for GET /v1/batches."""
        return f"{self.prefix}:batches:{owner}"

    def batch_idempotency(self, owner: str, key: str) -> str:
        """String: the batch id created for (owner, Idempotency-Key) and its fingerprint."""
        return f"{self.prefix}:idem-batch:{owner}:{key}"


#: Seconds of history behind the drain rate (in DRAIN_BUCKET_S buckets).
DRAIN_WINDOW_S = 60
DRAIN_BUCKET_S = 10

#: How many recent batch sizes are kept in ``recent_batches``.
RECENT_BATCHES = 1000

#: A worker's heartbeat counts for /readyz for this many heartbeat intervals.
WORKER_ALIVE_BEATS = 3
#: A worker's info key (and its heartbeat entry) are dropped after this many missed beats.
WORKER_INFO_TTL_BEATS = 12
