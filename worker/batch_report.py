"""What one batch did: the record :class:`predq.worker.predict.BatchPredictor` fills as it runs a
batch and :class:`predq.worker.batch_metrics.BatchObserver` turns into metrics and a log line.

Its own module so that both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchReport:
    """What one batch did; handed to the metrics/logging hook."""

    batch_id: str
    n_jobs: int = 0
    n_rows: int = 0
    calls: list[tuple[str, str, int, int, float]] = field(default_factory=list)
    """(model, version, jobs, rows, seconds) per predict group."""
    outcomes: dict[str, tuple[str, float, str | None]] = field(default_factory=dict)
    queue_waits: list[float] = field(default_factory=list)
    """Seconds from each claimed job's submission to the claim."""
    ended_at_claim: list[str] = field(default_factory=list)
    """Final statuses the claim itself set (expired, or failed as poison)."""
    duplicates: list[int] = field(default_factory=list)
    """Positions (in the batch's requests) of duplicate deliveries: the job was running
    under another delivery's live lease, or had already ended through another delivery.
    Skipped: not predicted, not counted, no outcome of their own (their message is acked)."""
    predicted: set[str] = field(default_factory=set)
    """Ids of the jobs predict ran for (counted in each job's ``predictions`` field)."""
