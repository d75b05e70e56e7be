"""End to end on real parts: readings into the embedded broker, the runner, topics and chDB out."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from models.processor import GridProcessor
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from sinks.exceptions import SinkError
from streams.runtime.runner import StreamRunner, ensure_topics
from tests.integration.conftest import RunnerThread, make_settings, wait_until
from tests.integration.helpers import (
    committed,
    end_offsets,
    headers,
    produce,
    read_all,
)

pytestmark = pytest.mark.integration

STEP_MS = 900_000
PARTITIONS = 2


def _meter(meter: str, ts: int | str, kw: object, **extra: object) -> tuple[bytes, bytes]:
    return meter.encode(), orjson.dumps({"meter_id": meter, "ts": ts, "kw": kw, **extra})


def _workload(now_ms: int) -> tuple[list[tuple[bytes, bytes]], dict[str, int], int]:
    """Three meters x 60 readings with one spike, plus one bad record of each kind."""
    start = now_ms - 60 * STEP_MS
    good = []
    for i in range(60):
        for m in range(3):
            kw = 2.0 + 0.5 * m + 0.05 * ((i * 7 + m) % 5)
            if m == 0 and i == 50:
                kw = 25.0  # the spike
            good.append(_meter(f"m{m}", start + i * STEP_MS, kw, voltage_v=230.0 + (i % 3) * 0.2))
    bad = [
        (b"m9", b"{not json"),
        (b"m9", orjson.dumps({"meter_id": "m9", "ts": start})),  # no kw
        (b"m9", orjson.dumps({"meter_id": "m9", "ts": start, "kw": "12.5"})),  # string number
        (b"m9", orjson.dumps({"meter_id": "m9", "ts": start, "kw": 5e9})),  # absurd
        (b"m9", orjson.dumps({"meter_id": "m9", "ts": now_ms + 86_400_000, "kw": 1.0})),
        (b"m9", orjson.dumps({"meter_id": "m9", "ts": "2024-01-01T00:00:00", "kw": 1.0})),
        (b"m9", b"[1, 2, 3]"),
        (b"m9", b"x" * 70_000),
        # after all of m1's good readings: a reading older than its last one
        _meter("m1", start + 10 * STEP_MS, 3.0),
        # m2 again at its last timestamp with another value
        _meter("m2", start + 59 * STEP_MS, 99.0),
    ]
    expected_reasons = Counter(
        {
            "malformed_json": 1,
            "missing_field": 1,
            "invalid_type": 1,
            "out_of_range": 1,
            "timestamp_in_future": 1,
            "invalid_value": 1,
            "not_an_object": 1,
            "oversized": 1,
            "out_of_order": 1,
            "conflicting_duplicate": 1,
        }
    )
    duplicate = [good[-1]]  # an exact redelivery: a counted drop, not a dead letter
    return good + bad + duplicate, dict(expected_reasons), len(good)


def test_pipeline_end_to_end(bootstrap: str, unique: str, chdb_path: Path) -> None:
    settings = make_settings(bootstrap, unique, chdb_path, partitions=PARTITIONS, cooldown_s=0)
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    records, reasons, n_good = _workload(now_ms)
    produce(bootstrap, settings.topics.meter, records)

    backend = ChdbBackend(chdb_path)
    sink = ClickHouseSink(backend, settings.clickhouse.database)
    sink.ensure_schema()
    runner = StreamRunner(settings, GridProcessor(settings.processing.params()), sink)
    stats = runner.run(idle_exit_s=4.0)
    c = stats.counters

    # every record read ends in exactly one place
    assert c["consumed"] == len(records)
    assert c["dropped_duplicate"] == 1
    assert c["dead_letters"] == sum(reasons.values())
    assert (
        c["readings"]
        - c["dropped_duplicate"]
        - reasons["out_of_order"]
        - reasons["conflicting_duplicate"]
        == n_good
    )
    for reason, count in reasons.items():
        assert c[f"dead_letter_{reason}"] == count, reason

    # dead letters: original bytes, reason and source coordinates in headers
    dead = read_all(bootstrap, settings.topics.dead_letters, expect=sum(reasons.values()))
    reason = "__connect.errors.exception.class.name"
    assert Counter(headers(m)[reason].decode() for m in dead) == Counter(reasons)
    originals = {v for _, v in records}
    assert all(m.value() in originals for m in dead)
    assert all(
        headers(m)["__connect.errors.topic"].decode() == settings.topics.meter for m in dead
    )

    # forecasts: two horizons for every good reading once its meter has 3 readings
    forecasts = read_all(bootstrap, settings.topics.forecasts, expect=c["forecasts"])
    assert len(forecasts) == c["forecasts"] == 2 * (n_good - 3 * 2)
    doc = orjson.loads(forecasts[0].value())
    assert set(doc) == {
        "entity_id",
        "entity_kind",
        "issued_at",
        "horizon_s",
        "target_ts",
        "p10",
        "p50",
        "p90",
        "unit",
        "model",
    }
    assert doc["p10"] <= doc["p50"] <= doc["p90"]
    assert forecasts[0].key().decode() == doc["entity_id"]

    # the spike is an anomaly event for m0 at its timestamp
    anomalies = read_all(bootstrap, settings.topics.anomalies, expect=None, idle_s=2.0)
    events = [orjson.loads(m.value()) for m in anomalies]
    spike_ts = now_ms - 60 * STEP_MS + 50 * STEP_MS
    spike = [e for e in events if e["entity_id"] == "m0" and e["reading"]["kw"] == 25.0]
    assert len(spike) == 1
    assert spike[0]["severity"] in ("warning", "critical")
    assert spike[0]["explanation"][0]["feature"] in ("kw", "kw_vs_time_of_day")
    assert spike[0]["reading"]["ts"].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(spike_ts / 1000))
    )
    assert len({e["event_id"] for e in events}) == len(events)
    assert all(
        headers(m)["severity"].decode() == e["severity"]
        for m, e in zip(anomalies, events, strict=True)
    )

    # ClickHouse has what the topics have
    db = settings.clickhouse.database
    count = lambda sql: int(backend.query(sql).rows[0][0])  # noqa: E731
    assert count(f"SELECT count() FROM {db}.forecasts FINAL") == len(forecasts)
    assert count(f"SELECT count() FROM {db}.anomalies FINAL") == len(events)
    assert count(f"SELECT count() FROM {db}.dead_letters FINAL") == len(dead)

    # every input offset is committed
    assert committed(bootstrap, settings.kafka.group_id, settings.topics.meter, PARTITIONS) == (
        end_offsets(bootstrap, settings.topics.meter, PARTITIONS)
    )
    backend.close()


def test_offsets_not_committed_until_outputs_written(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    """A ClickHouse table that refuses inserts stops the batch before its commit; after the
    table is back, the replayed batch is written and counted once."""
    settings = make_settings(bootstrap, unique, chdb_path, partitions=PARTITIONS, cooldown_s=0)
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    records, reasons, _ = _workload(now_ms)
    produce(bootstrap, settings.topics.meter, records)
    backend = ChdbBackend(chdb_path)
    sink = ClickHouseSink(backend, settings.clickhouse.database)
    sink.ensure_schema()
    db = settings.clickhouse.database
    backend.command(f"DETACH TABLE {db}.dead_letters")

    with pytest.raises(SinkError, match="dead_letters"):
        StreamRunner(settings, clickhouse=sink).run(idle_exit_s=4.0)
    offsets = committed(bootstrap, settings.kafka.group_id, settings.topics.meter, PARTITIONS)
    assert all(off < 0 for off in offsets), offsets  # nothing committed

    backend.command(f"ATTACH TABLE {db}.dead_letters")
    stats = StreamRunner(settings, clickhouse=sink).run(idle_exit_s=4.0)
    assert stats.counters["consumed"] == len(records)
    count = lambda sql: int(backend.query(sql).rows[0][0])  # noqa: E731
    # the failed attempt inserted forecasts before dead_letters refused: counted once with FINAL
    assert count(f"SELECT count() FROM {db}.forecasts FINAL") == stats.counters["forecasts"]
    assert count(f"SELECT count() FROM {db}.dead_letters FINAL") == sum(reasons.values())
    assert committed(bootstrap, settings.kafka.group_id, settings.topics.meter, PARTITIONS) == (
        end_offsets(bootstrap, settings.topics.meter, PARTITIONS)
    )
    backend.close()


def test_clickhouse_outage_pauses_input_commits_nothing_and_loses_nothing(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    """While inserts fail with a retryable error, the runner holds its one batch, consumes no
    more (memory is bounded by that batch) and commits nothing new; when ClickHouse accepts
    inserts again everything is written once and committed."""
    settings = make_settings(bootstrap, unique, chdb_path, partitions=PARTITIONS, cooldown_s=0)
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    first, _, _ = _workload(now_ms)
    produce(bootstrap, settings.topics.meter, first)
    backend = ChdbBackend(chdb_path)
    sink = ClickHouseSink(backend, settings.clickhouse.database)
    sink.ensure_schema()
    db = settings.clickhouse.database
    runner = StreamRunner(settings, clickhouse=sink, max_backoff_s=0.5)
    with RunnerThread(runner) as running:
        consumed = lambda: runner.stats.counters["consumed"]  # noqa: E731
        wait_until("the first batch", lambda: consumed() == len(first), check=running.check)
        before = committed(bootstrap, settings.kafka.group_id, settings.topics.meter, PARTITIONS)
        # ClickHouse's own retryable refusal (TOO_MANY_PARTS) on the table every batch writes
        backend.command(f"ALTER TABLE {db}.forecasts MODIFY SETTING parts_to_throw_insert = 1")
        later = [
            _meter(f"n{i % 7}", now_ms - (200 - i // 7) * STEP_MS, 1.0 + (i % 5) * 0.1)
            for i in range(1400)
        ]
        produce(bootstrap, settings.topics.meter, later)
        wait_until(
            "three retries", lambda: runner.stats.counters["sink_retries"] >= 3,
            check=running.check,
        )
        assert runner.stats.counters["consumed"] == len(first)  # the failing batch is held
        assert (
            committed(bootstrap, settings.kafka.group_id, settings.topics.meter, PARTITIONS)
            == before
        )
        backend.command(f"ALTER TABLE {db}.forecasts RESET SETTING parts_to_throw_insert")
        wait_until(
            "the held batch and the rest", lambda: consumed() == len(first) + len(later),
            check=running.check,
        )
    c = runner.stats.counters
    count = lambda sql: int(backend.query(sql).rows[0][0])  # noqa: E731
    assert count(f"SELECT count() FROM {db}.forecasts FINAL") == c["forecasts"]
    assert count(f"SELECT count() FROM {db}.forecasts") == c["forecasts"]  # no replay doubled
    assert committed(bootstrap, settings.kafka.group_id, settings.topics.meter, PARTITIONS) == (
        end_offsets(bootstrap, settings.topics.meter, PARTITIONS)
    )
    backend.close()
