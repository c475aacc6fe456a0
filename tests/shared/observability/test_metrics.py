"""predq.shared.observability.metrics: Redis-backed cluster metrics and their Prometheus
rendering."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from predq.api.observability.exposition import ClusterSnapshot, render_cluster
from predq.shared.jobstore.keys import Keys
from predq.shared.observability import metrics as m


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def client(settings_env: dict[str, str]) -> Any:
    c = redis.Redis.from_url(settings_env["PREDQ_REDIS_URL"])
    yield c
    c.close()


@pytest.fixture
def keys(settings_env: dict[str, str]) -> Keys:
    return Keys(settings_env["PREDQ_KEY_PREFIX"])


def snapshot(client: Any, keys: Keys, **kw: Any) -> ClusterSnapshot:
    return ClusterSnapshot(counters=client.hgetall(keys.metrics()), **kw)


def test_sample_fields_round_trip_with_escapes() -> None:
    labels = {"model": 'we"ird\\na\nme', "version": "2"}
    raw = m.sample_field("predq_x_total", labels)
    assert m.parse_field(raw) == ("predq_x_total", labels)
    assert m.parse_field("predq_y") == ("predq_y", {})


def test_histogram_buckets_are_stored_flat_and_rendered_cumulative(client: Any, keys: Keys
                                                                    ) -> None:
    with client.pipeline(transaction=False) as pipe:
        m.QUEUE_WAIT.observe(pipe, keys, [0.0005, 0.003, 0.003, 7.0])
        m.QUEUE_WAIT.observe(pipe, keys, [5000.0])  # above every bound: +Inf only
        m.QUEUE_WAIT.observe(pipe, keys, [])  # nothing queued
        pipe.execute()
    raw = client.hgetall(keys.metrics())
    assert int(raw[b'predq_queue_wait_seconds_bucket{le="0.005"}']) == 2  # not cumulative
    got = samples(render_cluster(snapshot(client, keys)))
    bucket = "predq_queue_wait_seconds_bucket"
    assert got[(bucket, (("le", "0.001"),))] == 1
    assert got[(bucket, (("le", "0.005"),))] == 3
    assert got[(bucket, (("le", "5.0"),))] == 3
    assert got[(bucket, (("le", "10.0"),))] == 4
    assert got[(bucket, (("le", "+Inf"),))] == 5
    assert got[("predq_queue_wait_seconds_count", ())] == 5
    assert got[("predq_queue_wait_seconds_sum", ())] == pytest.approx(5007.0065)


def test_counters_with_labels_and_initial_zeros(client: Any, keys: Keys) -> None:
    with client.pipeline(transaction=False) as pipe:
        m.JOBS_FINISHED.inc(pipe, keys, 3, status="succeeded")
        m.JOBS_FINISHED.inc(pipe, keys, -1, status="succeeded")  # a correction
        m.PREDICT_ROWS.inc(pipe, keys, 10, model="iris", version="1")
        m.MODEL_LOAD_SECONDS.inc(pipe, keys, 0.25)
        m.PREDICT_DURATION.observe(pipe, keys, [0.02], model="iris", version="1")
        pipe.execute()
    got = samples(render_cluster(snapshot(client, keys, queue_depth={"q": 4},
                                            workers_alive=2, unacked=7)))
    assert got[("predq_jobs_finished_total", (("status", "succeeded"),))] == 2
    for status in ("failed", "cancelled", "expired"):  # present before anything happened
        assert got[("predq_jobs_finished_total", (("status", status),))] == 0
    assert got[("predq_predict_rows_total", (("model", "iris"), ("version", "1")))] == 10
    assert got[("predq_model_load_seconds_total", ())] == 0.25
    assert got[("predq_predict_duration_seconds_count",
                (("model", "iris"), ("version", "1")))] == 1
    assert got[("predq_queue_depth", (("queue", "q"),))] == 4
    assert got[("predq_workers_alive", ())] == 2
    assert got[("predq_broker_unacked_messages", ())] == 7
    assert got[("predq_redis_up", ())] == 1
    assert got[("predq_webhook_deliveries_total", (("outcome", "delivered"),))] == 0


def test_record_webhook_counts_and_never_raises(client: Any, keys: Keys) -> None:
    m.record_webhook(client, keys, "delivered", seconds=0.2)
    with client.pipeline(transaction=False) as pipe:
        m.record_webhook(pipe, keys, "retry")
        m.record_webhook(pipe, keys, "Not A Word!")  # counted as "other"
        pipe.execute()
    m.record_webhook(None, keys, "delivered")  # no-op

    class Broken:
        def hincrby(self, *a: Any) -> None:
            raise redis.ConnectionError("down")

    m.record_webhook(Broken(), keys, "delivered")  # swallowed
    got = samples(render_cluster(snapshot(client, keys)))
    deliveries = "predq_webhook_deliveries_total"
    assert got[(deliveries, (("outcome", "delivered"),))] == 1
    assert got[(deliveries, (("outcome", "retry"),))] == 1
    assert got[(deliveries, (("outcome", "other"),))] == 1
    assert got[("predq_webhook_delivery_duration_seconds_count", ())] == 1


def test_a_scrape_without_redis_still_renders() -> None:
    got = samples(render_cluster(ClusterSnapshot(redis_up=False)))
    assert got[("predq_redis_up", ())] == 0
    assert got[("predq_jobs_finished_total", (("status", "succeeded"),))] == 0


def test_broker_lists_cover_every_priority() -> None:
    assert m.broker_lists("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]


def test_http_metrics_follow_prometheus_names() -> None:
    http = m.HttpMetrics()
    http.observe("GET", "/v1/jobs/{job_id}", 404, 0.003)
    got = samples(http.render())
    assert got[("predq_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}"),
                                              ("status", "404")))] == 1
    assert got[("predq_http_request_duration_seconds_count",
                (("method", "GET"), ("route", "/v1/jobs/{job_id}")))] == 1
    names = {name for name, _ in got}
    assert all(n.startswith(("predq_", "process_", "python_")) for n in names)
