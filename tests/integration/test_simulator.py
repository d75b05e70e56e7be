"""``run_simulator`` against the real embedded broker: what it reports is what Kafka holds."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.outputs import LabelledAnomaly
from schemas.readings import MeterReading, ScadaReading, epoch_ms
from streams.sim.generator import SimConfig, TelemetrySimulator
from streams.sim.producer import SimStats, run_simulator
from streams.tools.broker import free_port

pytestmark = pytest.mark.integration

START = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000
PARTITIONS = 3


def create_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    for future in futures.values():
        future.result(timeout=30)


def consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of ``topic``; waits for ``expected`` at most 60 s."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(out) < expected:
            for msg in consumer.consume(10_000, 0.5):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
        for msg in consumer.consume(10_000, 0.5):  # anything beyond what was expected
            out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def test_every_record_reaches_kafka_and_matches_the_pure_generator(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    meters, scada, labels = f"meters-{unique}", f"scada-{unique}", f"labels-{unique}"
    create_topics(bootstrap, meters, scada, labels)
    cfg = SimConfig(
        meters=40,
        assets=10,
        seed=21,
        anomaly_rate_per_day=4.0,
        late_rate=0.05,
        duplicate_rate=0.02,
        missing_rate=0.02,
    )
    seen: list[SimStats] = []
    stats = run_simulator(
        bootstrap,
        meters,
        scada,
        cfg,
        start_ms=START,
        speed=float("inf"),
        until_ms=START + 12 * HOUR,
        labels_path=tmp_path / "labels.jsonl",
        labels_topic=labels,
        progress=seen.append,
    )
    assert stats.delivery_errors == 0 and stats.errors == ()
    assert stats.delivered == stats.produced + stats.labels
    assert stats.produced == stats.generated - stats.missing + stats.duplicates - stats.held_back
    assert stats.sim_time_ms == START + 12 * HOUR and len(seen) >= 1
    expected = TelemetrySimulator(cfg, START).step_until(START + 12 * HOUR)

    got_meters = consume_all(bootstrap, meters, stats.meter_records)
    got_scada = consume_all(bootstrap, scada, stats.scada_records)
    assert len(got_meters) == stats.meter_records and len(got_scada) == stats.scada_records
    for records, model, id_field in (
        (got_meters, MeterReading, "meter_id"),
        (got_scada, ScadaReading, "asset_id"),
    ):
        for key, value in records:
            reading = model.model_validate(orjson.loads(value))
            assert key.decode() == getattr(reading, id_field)
    assert Counter(v for _, v in got_meters + got_scada) == Counter(expected.value)

    got_labels = consume_all(bootstrap, labels, stats.labels)
    lines = (tmp_path / "labels.jsonl").read_bytes().splitlines()
    assert len(got_labels) == len(lines) == stats.labels == len(expected.labels) > 0
    from_file = [LabelledAnomaly.model_validate_json(line) for line in lines]
    assert from_file == expected.labels
    assert Counter(v for _, v in got_labels) == Counter(lines)


class FakeClock:
    """Epoch seconds that move only when the simulator sleeps."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now_s += seconds


def test_backfill_catches_up_then_follows_the_clock(bootstrap: str, unique: str) -> None:
    meters, scada = f"meters-{unique}", f"scada-{unique}"
    create_topics(bootstrap, meters, scada)
    clock = FakeClock(START / 1000 + 2 * 3600)  # "now" is two hours after the start
    behind: list[int] = []

    def check(stats: SimStats) -> None:
        behind.append(int(clock() * 1000) - stats.sim_time_ms)

    stats = run_simulator(
        bootstrap,
        meters,
        scada,
        SimConfig(meters=20, assets=5, seed=2),
        start_ms=START,
        speed=float("inf"),
        duration_s=3 * 3600,
        progress=check,
        clock=clock,
        sleep=clock.sleep,
    )
    assert stats.delivery_errors == 0 and stats.sim_time_ms == START + 3 * HOUR
    assert min(behind) >= 0  # never a reading from the future
    assert clock() * 1000 >= START + 3 * HOUR  # the last hour ran in (fake) real time
    assert clock.sleeps > 0
    assert len(consume_all(bootstrap, meters, stats.meter_records)) == stats.meter_records


def test_stop_event_ends_an_open_ended_run_with_everything_delivered(
    bootstrap: str, unique: str
) -> None:
    meters, scada = f"meters-{unique}", f"scada-{unique}"
    create_topics(bootstrap, meters, scada)
    stop = threading.Event()
    clock = FakeClock(START / 1000)

    def stop_after_a_day(stats: SimStats) -> None:
        if stats.sim_time_ms >= START + 24 * HOUR:
            stop.set()

    stats = run_simulator(
        {"bootstrap.servers": bootstrap, "linger.ms": 5},
        meters,
        scada,
        SimConfig(meters=10, assets=3),
        start_ms=START,
        speed=3600.0,
        follow_clock=False,
        stop_event=stop,
        progress=stop_after_a_day,
        clock=clock,
        sleep=clock.sleep,
    )
    assert stop.is_set() and stats.sim_time_ms >= START + 24 * HOUR
    assert stats.delivered == stats.produced > 0 and stats.delivery_errors == 0


def test_undeliverable_records_are_counted_not_lost_silently() -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every record times out
    stats = run_simulator(
        {"bootstrap.servers": dead, "message.timeout.ms": 1500},
        "m",
        "s",
        SimConfig(meters=5, assets=2, missing_rate=0.0),
        start_ms=START,
        speed=float("inf"),
        until_ms=START + HOUR,
        flush_timeout_s=30,
    )
    assert stats.produced > 0 and stats.delivered == 0
    assert stats.delivery_errors == stats.produced and stats.errors


def test_a_restarted_simulator_with_resume_continues_after_what_the_topics_hold(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """The compose service restarts with --resume: no second backfill, no reading repeated."""
    from tests.integration.helpers import read_all

    meters, scada = f"meters-{unique}", f"scada-{unique}"
    create_topics(bootstrap, meters, scada)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env.update(
        GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        GRIDSTREAM_TOPICS__METER=meters,
        GRIDSTREAM_TOPICS__SCADA=scada,
        GRIDSTREAM_KAFKA__CREATE_TOPICS="false",
    )
    command = [
        sys.executable, "-m", "streams.cli", "simulate", "--meters", "20", "--assets", "4",
        "--backfill-hours", "12", "--seconds", "3", "--resume",
    ]  # fmt: skip

    def run() -> list[int]:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return sorted(epoch_ms(orjson.loads(m.value())["ts"]) for m in read_all(bootstrap, meters))

    first = run()
    assert first[-1] - first[0] >= 11 * HOUR  # the first start backfilled
    second = run()
    assert second[: len(first)] == first  # kept as they were
    added = second[len(first) :]
    assert all(ts > first[-1] for ts in added)  # nothing before where the first run stopped
    assert len(added) < len(first) / 10  # a few seconds of real time, not 12 h again
