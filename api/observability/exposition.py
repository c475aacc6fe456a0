"""Prometheus text of the cluster metrics: what one scrape of ``/metrics`` renders.

The API reads a :class:`ClusterSnapshot` from Redis (the metrics hash the workers add to, queue
lengths, heartbeats) and :func:`render_cluster` turns it into the text exposition format. The
metrics themselves are defined in :mod:`predq.shared.observability.metrics`; histogram buckets,
stored there
non-cumulative, become cumulative here. Series that Redis does not hold yet are rendered as 0
where a metric lists initial label values, so ``rate()`` works from the first scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from predq.shared.observability import metrics as m


@dataclass
class ClusterSnapshot:
    """Everything cluster-wide that one scrape renders, read from Redis in one pipeline."""

    counters: Mapping[bytes | str, bytes | str] = field(default_factory=dict)
    queue_depth: Mapping[str, int] = field(default_factory=dict)
    workers_alive: int = 0
    unacked: int = 0
    redis_up: bool = True


def _decode(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _cluster_families(snap: ClusterSnapshot) -> Iterator[Metric]:
    parsed: dict[str, list[tuple[dict[str, str], float]]] = {}
    for raw_field, raw_value in snap.counters.items():
        name, labels = m.parse_field(_decode(raw_field))
        try:
            parsed.setdefault(name, []).append((labels, float(_decode(raw_value))))
        except ValueError:
            continue
    for metric in m.CLUSTER_METRICS:
        if isinstance(metric, m.ClusterCounter):
            yield _counter_family(metric, parsed.get(metric.name, []))
        else:
            yield _histogram_family(metric, parsed)
    depth = GaugeMetricFamily(m.QUEUE_DEPTH.name, m.QUEUE_DEPTH.documentation,
                              labels=list(m.QUEUE_DEPTH.labelnames))
    for queue, n in sorted(snap.queue_depth.items()):
        depth.add_metric([queue], n)
    yield depth
    for gauge, value in ((m.WORKERS_ALIVE, snap.workers_alive), (m.BROKER_UNACKED, snap.unacked),
                         (m.REDIS_UP, 1 if snap.redis_up else 0)):
        yield GaugeMetricFamily(gauge.name, gauge.documentation, value=value)


def _counter_family(metric: m.ClusterCounter, samples: list[tuple[dict[str, str], float]]
                    ) -> CounterMetricFamily:
    fam = CounterMetricFamily(metric.name, metric.documentation, labels=list(metric.labelnames))
    values: dict[tuple[str, ...], float] = {tuple(init): 0.0 for init in metric.initial}
    for labels, value in samples:
        key = tuple(labels.get(n, "") for n in metric.labelnames)
        values[key] = values.get(key, 0.0) + value
    for key, value in sorted(values.items()):
        fam.add_metric(list(key), value)
    return fam


def _histogram_family(metric: m.ClusterHistogram,
                      parsed: Mapping[str, list[tuple[dict[str, str], float]]]
                      ) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(metric.name, metric.documentation,
                                labels=list(metric.labelnames))
    series: dict[tuple[str, ...], dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any]:
        key = tuple(labels.get(n, "") for n in metric.labelnames)
        return series.setdefault(key, {"buckets": {}, "sum": 0.0})

    for labels, value in parsed.get(f"{metric.name}_bucket", []):
        le = labels.get("le", "+Inf")
        buckets = entry(labels)["buckets"]
        buckets[le] = buckets.get(le, 0.0) + value
    for labels, value in parsed.get(f"{metric.name}_sum", []):
        entry(labels)["sum"] += value
    for key, data in sorted(series.items()):
        known = dict.fromkeys(metric.bounds, 0.0)
        known.update(data["buckets"])
        known.setdefault("+Inf", 0.0)
        cumulative, running = [], 0.0
        for le in sorted(known, key=float):
            running += known[le]
            cumulative.append((le, running))
        fam.add_metric(list(key), cumulative, sum_value=data["sum"])
    return fam


class _Families:
    """An object with ``collect()``, which is all ``generate_latest`` needs."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def render_cluster(snap: ClusterSnapshot) -> bytes:
    """The Prometheus text of the cluster metrics in ``snap``."""
    return generate_latest(_Families(_cluster_families(snap)))
