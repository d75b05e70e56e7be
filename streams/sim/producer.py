"""The Kafka side of ``gridstream simulate``: paces the pure generator and produces its records.

Simulated time advances at ``speed`` simulated seconds per wall second. With ``follow_clock`` it
never runs ahead of the wall clock, so a backfill that starts days ago at high speed catches up
and then continues in real time, and no reading is from the future. ``clock`` and ``sleep`` are
injectable, so tests pace a run without waiting. Every record handed to the producer is counted
as delivered or failed; a failure is never silent.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
)

from schemas.exceptions import GridstreamError
from streams.sim.generator import SimBatch, SimConfig, TelemetrySimulator

log = logging.getLogger(__name__)

# Sensible for bursts of small JSON records; anything here can be overridden by the caller's dict.
PRODUCER_DEFAULTS: dict[str, object] = {
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "acks": "all",
    "enable.idempotence": True,  # broker retries must not add duplicates we did not inject
    "queue.buffering.max.messages": 500_000,
    "message.timeout.ms": 60_000,
}
_CHUNK_RECORDS = 50_000  # at most about this many records are generated per loop turn
_MAX_SLEEP_S = 0.2  # the longest wait between checks of the stop event
_POLL_EVERY = 5_000


class SimulatorError(GridstreamError):
    """The simulator could not run (bad arguments, fatal producer error)."""


@dataclass(frozen=True, slots=True)
class SimStats:
    """What a run did; ``delivery_errors`` counts records Kafka did not acknowledge."""

    meter_records: int = 0  # produced to the meter topic (duplicates included)
    scada_records: int = 0
    labels: int = 0  # labels written (file and/or topic)
    delivered: int = 0  # acknowledged by Kafka, records and labels
    delivery_errors: int = 0
    generated: int = 0  # readings computed, before missing/duplicates
    missing: int = 0
    late: int = 0  # readings sent (or to be sent) after their time
    duplicates: int = 0
    held_back: int = 0  # late readings due after the end of the run, so never sent
    sim_start_ms: int = 0
    sim_time_ms: int = 0  # simulated time reached
    wall_s: float = 0.0
    errors: tuple[str, ...] = ()  # the first few delivery errors, verbatim

    @property
    def produced(self) -> int:
        return self.meter_records + self.scada_records


class _Deliveries:
    """Delivery-report counters, fed from librdkafka's callbacks in ``poll``/``flush``."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []
        self.fatal: KafkaError | None = None
        self.seen: set[int] = set()

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(f"topic {msg.topic()} key {msg.key()!r}: {err.str()}")

    def on_error(self, err: KafkaError) -> None:
        """Client-level errors (broker down, ...); librdkafka retries, we log each kind once."""
        if err.fatal():
            self.fatal = err
        level = logging.DEBUG if err.code() in self.seen else logging.WARNING
        self.seen.add(err.code())
        log.log(level, "simulator producer: %s", err.str())


def run_simulator(
    bootstrap: str | Mapping[str, object],
    meter_topic: str,
    scada_topic: str,
    config: SimConfig,
    *,
    start_ms: int | None = None,
    speed: float = 1.0,
    duration_s: float | None = None,
    until_ms: int | None = None,
    follow_clock: bool = True,
    labels_path: Path | None = None,
    labels_topic: str | None = None,
    stop_event: threading.Event | None = None,
    progress: Callable[[SimStats], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
    flush_timeout_s: float = 90.0,
) -> SimStats:
    """Generate telemetry from ``start_ms`` (default: now) and produce it to Kafka.

    ``bootstrap`` is a bootstrap string or a librdkafka config (merged over
    ``PRODUCER_DEFAULTS``). The run ends at ``until_ms`` or ``start + duration_s``, or, with
    neither, when ``stop_event`` is set. ``speed`` may be ``math.inf``: as fast as possible (up
    to the clock when ``follow_clock``). ``clock`` returns epoch seconds; ``sleep`` waits (the
    default serves delivery reports while it waits). Labels are appended as JSON lines to
    ``labels_path`` and/or produced to ``labels_topic`` (key = entity id).
    """
    _check_arguments(speed, duration_s, until_ms, meter_topic, scada_topic)
    wall0 = clock()
    start = int(wall0 * 1000) if start_ms is None else int(start_ms)
    end = until_ms if duration_s is None else start + int(duration_s * 1000)
    reports = _Deliveries()
    producer = _producer(bootstrap, reports)
    pace = _Pace(wall0, start, end, speed, follow_clock, clock)
    topics = {"meter": meter_topic, "scada": scada_topic}
    run = _Run(producer, reports, TelemetrySimulator(config, start), topics, pace, labels_topic)
    labels_file: IO[bytes] | None = None
    try:
        if labels_path is not None:
            labels_file = open(labels_path, "ab")  # noqa: SIM115 - closed in finally
        run.labels_file = labels_file
        wait = sleep if sleep is not None else lambda s: producer.poll(s)
        run.loop(stop_event, progress, wait)
    finally:
        if labels_file is not None:
            labels_file.close()
        left = producer.flush(flush_timeout_s)
        if left:
            reports.failed += left
            reports.errors.append(f"{left} records not acknowledged within {flush_timeout_s} s")
    return _logged(run.stats())


def _logged(result: SimStats) -> SimStats:
    if result.delivery_errors:
        log.error(
            "simulator: %d of %d records were not delivered; first: %s",
            result.delivery_errors,
            result.delivered + result.delivery_errors,
            result.errors[:1],
        )
    return result


def _producer(bootstrap: str | Mapping[str, object], reports: _Deliveries) -> Producer:
    conf = {"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else dict(bootstrap)
    return Producer(
        {
            **PRODUCER_DEFAULTS,
            **conf,
            "on_delivery": reports.on_delivery,
            "error_cb": reports.on_error,
        }
    )


def _check_arguments(
    speed: float, duration_s: float | None, until_ms: int | None, meter: str, scada: str
) -> None:
    if not (speed > 0):  # also rejects NaN
        raise SimulatorError(
            f"run_simulator: speed must be > 0 simulated s per wall s, got {speed}"
        )
    if duration_s is not None and until_ms is not None:
        raise SimulatorError("run_simulator: give duration_s or until_ms, not both")
    if not meter or not scada:
        raise SimulatorError("run_simulator: meter_topic and scada_topic must be non-empty")


@dataclass(frozen=True, slots=True)
class _Pace:
    """How simulated time follows the wall clock: ``speed`` x, never ahead of it if
    ``follow_clock``, and up to ``end`` (None: open-ended)."""

    wall0: float
    start: int
    end: int | None
    speed: float
    follow_clock: bool
    clock: Callable[[], float]

    def due_wall(self, sim_ms: int) -> float:
        """Wall time (epoch s) at which simulated time reaches ``sim_ms``."""
        at = self.wall0 + (sim_ms - self.start) / 1000.0 / self.speed
        return max(at, sim_ms / 1000.0) if self.follow_clock else at

    def target(self, now: float, next_due_ms: int) -> float:
        """The simulated time (ms) the run may reach at wall time ``now``."""
        speed = self.speed
        target = (
            self.start + (now - self.wall0) * 1000.0 * speed if math.isfinite(speed) else math.inf
        )
        if self.follow_clock:
            target = min(target, now * 1000.0)
        if self.due_wall(next_due_ms) <= now:  # float epoch seconds can leave it a hair short
            target = max(target, next_due_ms)
        if self.end is not None:
            target = min(target, self.end)
        return target


class _Run:
    """One simulator run: generates up to the paced target, produces, counts."""

    def __init__(
        self,
        producer: Producer,
        reports: _Deliveries,
        sim: TelemetrySimulator,
        topics: dict[str, str],
        pace: _Pace,
        labels_topic: str | None,
    ) -> None:
        self.producer, self.reports, self.sim, self.topics = producer, reports, sim, topics
        self.pace, self.labels_topic = pace, labels_topic
        self.labels_file: IO[bytes] | None = None
        c = sim.config
        per_ms = c.meters / (c.meter_interval_s * 1e3) + c.assets / (c.scada_interval_s * 1e3)
        self.chunk_ms = max(1000, int(_CHUNK_RECORDS / per_ms))
        self.totals = dict.fromkeys(
            ("meter", "scada", "labels", "generated", "missing", "late", "dup"), 0
        )
        self.reached = pace.start - 1  # nothing generated yet

    def loop(
        self,
        stop: threading.Event | None,
        progress: Callable[[SimStats], None] | None,
        wait: Callable[[float], object],
    ) -> None:
        pace, sim, end = self.pace, self.sim, self.pace.end
        while not (stop is not None and stop.is_set()):
            if self.reports.fatal is not None:
                raise SimulatorError(
                    f"simulator producer failed fatally: {self.reports.fatal.str()}"
                )
            target = pace.target(pace.clock(), sim.next_due_ms)
            capped = target > self.reached + self.chunk_ms
            target_ms = int(min(target, self.reached + self.chunk_ms))
            if target_ms > self.reached:
                batch = sim.step_until(target_ms)
                self.reached = target_ms
                _produce(self.producer, batch, self.topics, self.totals)
                _write_labels(
                    self.producer, batch, self.labels_file, self.labels_topic, self.totals
                )
                if progress is not None:
                    progress(self.stats())
            self.producer.poll(0)
            if end is not None and self.reached >= end:
                return
            pause = pace.due_wall(sim.next_due_ms) - pace.clock()
            if not capped and pause > 0:  # wait until the next record is due
                wait(min(max(pause, 0.001), _MAX_SLEEP_S))

    def stats(self) -> SimStats:
        t, reports, start = self.totals, self.reports, self.pace.start
        return SimStats(
            meter_records=t["meter"],
            scada_records=t["scada"],
            labels=t["labels"],
            delivered=reports.delivered,
            delivery_errors=reports.failed,
            generated=t["generated"],
            missing=t["missing"],
            late=t["late"],
            duplicates=t["dup"],
            held_back=self.sim.held_back,
            sim_start_ms=start,
            sim_time_ms=max(self.reached, start),
            wall_s=self.pace.clock() - self.pace.wall0,
            errors=tuple(reports.errors),
        )


def _send(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    """Hand one record to librdkafka, waiting for room while its local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:  # let librdkafka send and report, then retry
            producer.poll(0.1)
        except KafkaException as exc:
            raise SimulatorError(f"cannot produce to topic {topic}: {exc}") from exc


def _produce(
    producer: Producer, batch: SimBatch, topics: dict[str, str], totals: dict[str, int]
) -> None:
    for n, (contract, key, value) in enumerate(
        zip(batch.contract, batch.key, batch.value, strict=True), 1
    ):
        _send(producer, topics[contract], value, key)
        totals[contract] += 1
        if n % _POLL_EVERY == 0:
            producer.poll(0)
    totals["generated"] += batch.generated
    totals["missing"] += batch.missing
    totals["late"] += batch.late
    totals["dup"] += batch.duplicates


def _write_labels(
    producer: Producer,
    batch: SimBatch,
    labels_file: IO[bytes] | None,
    labels_topic: str | None,
    totals: dict[str, int],
) -> None:
    if not batch.labels or (labels_file is None and labels_topic is None):
        return
    lines = [label.model_dump_json().encode() for label in batch.labels]
    if labels_file is not None:
        labels_file.write(b"\n".join(lines) + b"\n")
        labels_file.flush()
    if labels_topic is not None:
        for label, line in zip(batch.labels, lines, strict=True):
            _send(producer, labels_topic, line, label.entity_id.encode())
    totals["labels"] += len(lines)
