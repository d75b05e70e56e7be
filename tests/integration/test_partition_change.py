"""Adding partitions to an input topic remaps keys; the runner must notice, not split state.

The embedded broker has no CreatePartitions (KIP-195), so the topic grows the one way it can:
deleted and created again with 8 partitions, between two runs (librdkafka 2.16 crashes when a
topic is deleted under a live consumer of the embedded broker), and written to by a producer that
keeps going while the runner starts: what the runner sees is what a grown topic shows, a new
partition count at assignment. The check is the same at an assignment during a run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.runtime.runner import StreamRunner, ensure_topics
from streams.state.layout import PartitionCountChanged
from tests.integration.conftest import RunnerThread, make_settings, wait_until
from tests.integration.recovery import meter_workload, produce_tracked

pytestmark = pytest.mark.integration


def _recreate(admin: AdminClient, topic: str, partitions: int) -> None:
    for fut in admin.delete_topics([topic]).values():
        fut.result(timeout=30)
    wait_until("the topic gone", lambda: topic not in admin.list_topics(timeout=10).topics)
    for fut in admin.create_topics([NewTopic(topic, partitions, -1)]).values():
        fut.result(timeout=30)


def _keep_producing(bootstrap: str, topic: str, records: list, stop: threading.Event) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for key, value in records:
        if stop.is_set():
            break
        producer.produce(topic, value, key)
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(30)


def test_growing_a_topic_from_4_to_8_partitions_under_load_is_refused_not_split(
    bootstrap: str, unique: str, chdb_path: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    settings = make_settings(
        bootstrap, unique, chdb_path, partitions=4, clickhouse="none", state_dir=state,
        checkpoint_interval_s=0.5,
    )
    ensure_topics(settings)
    meter = settings.topics.meter
    records = meter_workload(int(time.time() * 1000), meters=16, steps=40, bad_every=10**9)
    half = len(records) // 2
    produce_tracked(bootstrap, meter, records[:half])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    first = StreamRunner(settings)
    with RunnerThread(first, name="first") as running:
        wait_until("the first half consumed", lambda: first.stats.counters["consumed"] >= half,
                   check=running.check)
    group_dir = state / settings.kafka.group_id
    assert (group_dir / "layout.json").exists()
    _recreate(admin, meter, 8)
    stop_producing = threading.Event()
    producer = threading.Thread(
        target=_keep_producing, args=(bootstrap, meter, records[half:], stop_producing),
        daemon=True,
    )
    producer.start()  # under load: the runner starts while records keep arriving
    runner = StreamRunner(settings)
    running = RunnerThread(runner, name="after growth")
    try:
        wait_until("the runner to refuse", lambda: running.error is not None, timeout_s=120)
    finally:
        stop_producing.set()
        running.stop.set()
        running.thread.join(60)
        producer.join(30)
    error = running.error
    assert isinstance(error, PartitionCountChanged), error
    assert f"topic {meter} has 8 partitions" in str(error) and "built with 4" in str(error)
    assert "ON_PARTITION_CHANGE=reset" in str(error)
    assert runner.stats.counters["consumed"] == 0  # nothing of the new layout was processed
    saved = sorted(p.name for p in group_dir.glob(f"{meter}.*.ckpt"))
    assert saved == [f"{meter}.{p}.ckpt" for p in range(4)]  # the old state, untouched
