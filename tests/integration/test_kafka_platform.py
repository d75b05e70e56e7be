"""Kafka the way platform teams run it, on the embedded broker: Java-compatible partitioning of
outputs, input keys checked against entity ids, cooperative rebalances, created topics' config."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from sinks.partitioner import java_partition, murmur2
from streams.config import Settings
from streams.config_kafka import KafkaSettings
from streams.ops.monitor import NullMonitor
from streams.runtime.runner import StreamRunner, ensure_topics
from tests.integration.conftest import RunnerThread, make_settings, wait_until
from tests.integration.helpers import headers, produce, read_all

pytestmark = pytest.mark.integration

STEP_MS = 900_000


def test_the_murmur2_here_is_javas() -> None:
    # the vectors of Kafka's own UtilsTest.testMurmur2
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    assert {k: murmur2(k) for k in cases} == cases


def _reading(meter: str, ts: int, kw: float) -> bytes:
    return orjson.dumps({"meter_id": meter, "ts": ts, "kw": kw})


def _settings(bootstrap: str, unique: str, chdb_path: Path, partitions: int, **kafka: object
              ) -> Settings:
    base = make_settings(bootstrap, unique, chdb_path, clickhouse="none", partitions=partitions)
    return base.model_copy(
        update={"kafka": base.kafka.model_copy(update=kafka)}
    )


def test_output_keys_land_where_javas_partitioner_puts_them_and_wrong_keys_are_dead_lettered(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    partitions = 5
    settings = _settings(bootstrap, unique, chdb_path, partitions)
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    meters = [f"meter-{i:03d}" for i in range(24)]
    good = [
        (m.encode(), _reading(m, now_ms - (8 - i) * STEP_MS, 2.0 + i * 0.1))
        for i in range(8)
        for m in meters
    ]
    wrong = [
        (b"feeder-7", _reading("meter-900", now_ms - STEP_MS, 1.0)),  # keyed by another id
        (None, _reading("meter-901", now_ms - STEP_MS, 1.0)),  # no key at all
    ]
    produce(bootstrap, settings.topics.meter, good + wrong)
    runner = StreamRunner(settings)
    with RunnerThread(runner) as running:
        wait_until(
            "all consumed",
            lambda: runner.stats.counters["consumed"] >= len(good) + len(wrong),
            check=running.check,
        )
    forecasts = read_all(bootstrap, settings.topics.forecasts, expect=1)
    assert {m.key().decode() for m in forecasts} == set(meters)
    misplaced = [
        (m.key(), m.partition()) for m in forecasts
        if m.partition() != java_partition(m.key(), partitions)
    ]
    assert misplaced == []
    dead = read_all(bootstrap, settings.topics.dead_letters, expect=2)
    reasons = {headers(m)["__connect.errors.exception.class.name"]: m.key() for m in dead}
    assert list(reasons) == [b"key_mismatch"] and len(dead) == 2
    assert runner.stats.counters["key_mismatch"] == 2


def test_with_key_check_count_wrongly_keyed_readings_are_processed_and_counted(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    settings = _settings(bootstrap, unique, chdb_path, 2, key_check="count")
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    produce(bootstrap, settings.topics.meter, [(None, _reading("m1", now_ms, 1.0))])
    runner = StreamRunner(settings)
    with RunnerThread(runner) as running:
        wait_until("consumed", lambda: runner.stats.counters["consumed"] >= 1,
                   check=running.check)
    assert runner.stats.counters["key_mismatch"] == 1
    assert runner.stats.counters["dead_letters"] == 0


class _Moves(NullMonitor):
    """A monitor that remembers the partitions assigned to and revoked from its runner."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[str, int]] = []
        self.lost: list[tuple[str, int]] = []

    def assigned(self, parts: list[tuple[str, int]]) -> None:
        self.got.extend(parts)

    def revoked(self, parts: list[tuple[str, int]]) -> None:
        self.lost.extend(parts)


def test_a_joining_worker_takes_partitions_incrementally(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    """cooperative-sticky: the first worker keeps processing the partitions it keeps."""
    settings = _settings(bootstrap, unique, chdb_path, 4)
    assert settings.kafka.assignment_strategy == "cooperative-sticky"
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    meters = [f"m{i}" for i in range(16)]
    produce(bootstrap, settings.topics.meter, [
        (m.encode(), _reading(m, now_ms - STEP_MS * 3, 1.0)) for m in meters
    ])
    seen = _Moves()
    a = RunnerThread(StreamRunner(settings, monitor=seen), name="a")
    b: RunnerThread | None = None
    meter = settings.topics.meter
    try:
        wait_until("a to own all", lambda: len(a.runner.assigned) == 8, check=a.check)
        b = RunnerThread(StreamRunner(settings), name="b")
        wait_until("b to take some", lambda: b.runner.assigned and len(a.runner.assigned) < 8,
                   check=lambda: a.check() and b.check())
        produce(bootstrap, meter, [(m.encode(), _reading(m, now_ms - STEP_MS, 1.1))
                                   for m in meters])
        wait_until(
            "everything consumed once",
            lambda: a.runner.stats.counters["consumed"] + b.runner.stats.counters["consumed"]
            >= 32,
            check=lambda: a.check() and b.check(),
        )
        assert a.runner.assigned.isdisjoint(b.runner.assigned)
        assert len(a.runner.assigned | b.runner.assigned) == 8
        # incremental: A gave up exactly what B took, and kept processing the rest
        assert set(seen.lost) == b.runner.assigned
        assert a.runner.assigned == set(seen.got) - set(seen.lost)
    finally:
        a.close()
        if b is not None:
            b.close()


def test_created_topics_carry_the_configured_retention_and_min_insync_replicas(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    settings = _settings(
        bootstrap, unique, chdb_path, 3, retention_ms=3_600_000, min_insync_replicas=1,
        topic_config={"cleanup.policy": "delete"},
    )
    assert settings.kafka.replication_factor is None  # the broker's default
    created = ensure_topics(settings)
    assert settings.topics.forecasts in created
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, settings.topics.forecasts)
    (future,) = admin.describe_configs([resource]).values()
    configs = {k: v.value for k, v in future.result(timeout=30).items()}
    assert configs.get("retention.ms") == "3600000"
    assert configs.get("min.insync.replicas") == "1"


def test_producer_and_consumer_defaults_are_the_platforms() -> None:
    k = KafkaSettings()
    producer = k.producer_config()
    assert producer["partitioner"] == "murmur2_random"
    assert producer["compression.type"] == "zstd"
    assert producer["client.id"] == "gridstream"
    consumer = k.consumer_config()
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.instance.id" in consumer  # static membership is on by default
    assert "group.instance.id" not in KafkaSettings(static_membership=False).consumer_config()
