"""Every assigned partition progresses within a bounded number of batches, whatever the backlog.

Uneven backlogs on six partitions of the real embedded broker, read with batches of 16 readings.
librdkafka prefetches each partition's backlog into one FIFO queue, so taking ``consume(16)``
as the batch used to drain one partition after another (the last partition's first record came
in batch 460 of this workload). The runner's per-partition buffers (``streams.fairness``) give
every partition with records a share of every batch.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from streams.config import ClickHouseSettings, ProcessingSettings
from streams.ops.monitor import Monitor
from streams.runtime.runner import BatchReport, StreamRunner, ensure_topics
from tests.integration.conftest import make_settings
from tests.integration.helpers import committed

pytestmark = pytest.mark.integration
PARTITIONS = 6
BACKLOG = {0: 1200, 1: 60, 2: 1200, 3: 12, 4: 600, 5: 1200}  # readings per partition
BATCH = 16
BOUND = 4 * PARTITIONS  # batches; the unfair loop left partitions out for hundreds


def _produce(bootstrap: str, topic: str, now_ms: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for part, n in BACKLOG.items():
        meters = 4
        for i in range(n):
            meter = f"p{part}-m{i % meters}"
            ts = now_ms - (n // meters + 2 - i // meters) * 900_000
            value = orjson.dumps({"meter_id": meter, "ts": ts, "kw": 1.0 + (i % 7) / 10})
            producer.produce(topic, value, meter.encode(), partition=part)
    assert producer.flush(30) == 0


def test_uneven_backlogs_with_small_batches_progress_on_every_partition(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    base = make_settings(bootstrap, unique, chdb_path, partitions=PARTITIONS)
    settings = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"batch_size": BATCH, "batch_timeout_s": 0.05}),
            "clickhouse": ClickHouseSettings(backend="none"),
            "processing": ProcessingSettings(),
        }
    )
    ensure_topics(settings)
    _produce(bootstrap, settings.topics.meter, int(time.time() * 1000))

    seen: list[dict[tuple[str, int], int]] = []

    def on_batch(report: BatchReport) -> None:
        seen.append(dict(report.partitions))

    registry = CollectorRegistry()
    runner = StreamRunner(settings, on_batch=on_batch)
    runner.monitor = Monitor(runner.processor, registry=registry, clickhouse_enabled=False)
    runner.run(idle_exit_s=2.0)

    topic = settings.topics.meter
    offsets = committed(bootstrap, settings.kafka.group_id, topic, PARTITIONS)
    assert offsets == [BACKLOG[p] for p in range(PARTITIONS)]
    assert all(sum(b.values()) <= BATCH for b in seen)

    left = {(topic, p): n for p, n in BACKLOG.items()}
    since = dict.fromkeys(left, 0)
    worst = 0
    for batch in seen:
        for tp in left:
            if left[tp] == 0:
                continue
            if batch.get(tp):
                since[tp] = 0
                left[tp] -= batch[tp]
            else:
                since[tp] += 1
                worst = max(worst, since[tp])
    assert not any(left.values())
    print(f"most batches a partition with a backlog was left out: {worst} of {len(seen)}")
    assert worst <= BOUND

    records = Counter()
    for family in registry.collect():
        for s in family.samples:
            if s.name == "gridstream_partition_records_total":
                records[int(s.labels["partition"])] += s.value
    assert records == Counter(BACKLOG)
