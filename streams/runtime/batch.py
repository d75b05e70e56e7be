"""One batch step for both engines: decode -> process -> dead letters -> deliver -> record.

An engine (the native confluent-kafka loop, or the faust worker) consumes records, hands them to
``BatchStep.run`` as a ``Consumed`` batch, and answers the few questions that differ between
engines through the ``Engine`` port: which offsets are replays, how records are published, how
input is held while a sink is down, and how offsets are committed. Everything else is here once:

- unframe Schema Registry records (``streams.runtime.registry``), then decode + validate every
  record with the live contract of its topic (bad ones: dead letters);
- check that each reading's key is its entity id (``KafkaSettings.key_check``);
- route each reading to its partition's core (``streams.state.tasks.TaskSet``); replayed
  readings rebuild state only and publish nothing, they were published in an earlier life;
- one dead letter per rejected record, whether the decoder or the core rejected it;
- deliver the outputs in the guarantee's order (``streams.runtime.delivery``);
- commit (through the engine), then count the batch and describe it in a ``BatchReport``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.processor import ProcessResult
from schemas.batch import DeadLetterRecord, ReadingBatch, Rejection
from schemas.decode import METER, SCADA, decode_batch
from streams.config import ProcessingSettings, TopicSettings
from streams.config_kafka import SchemaRegistrySettings
from streams.ops.report import BatchReport
from streams.runtime.delivery import Delivery, Outputs, Pause, TopicRecords
from streams.runtime.failpoints import Failpoints
from streams.runtime.registry import RegistryUnavailable, Unframer
from streams.state.tasks import TaskId, TaskOutput, TaskSet

log = logging.getLogger("gridstream.batch")


@dataclass(slots=True)
class RunStats:
    batches: int = 0
    counters: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class Consumed:
    """A consumed batch in engine-neutral columns (records with a consumer error left out)."""

    values: list[bytes | None]
    topics: list[str]
    partitions: list[int]
    offsets: list[int]
    keys: Callable[[int], bytes | None]  # the key of record i, read only for dead letters

    def __len__(self) -> int:
        return len(self.values)


class Engine(Protocol):
    """What the batch step asks of the engine that consumed the batch."""

    pause: Pause
    commits_per_batch: bool  # False: the engine commits on its own schedule (faust)

    def replay_until(self) -> Mapping[TaskId, int]:
        """Per partition, the offset below which records are replays (publish nothing)."""

    def begin(self, route: Routing) -> None:
        """The batch's partitions are about to be ahead of their committed position."""

    def publish(self, records: TopicRecords, route: Routing) -> None:
        """Publish the output records (exactly-once: with the batch's offsets, atomically)."""

    def commit(self, route: Routing) -> None:
        """Make the batch's offsets committed and advance the tasks' positions."""

    def state_events(self) -> dict[str, int]:
        """Running totals of state events (restores, replays) for the report."""


@dataclass(slots=True)
class FinishedBatch:
    """What ``record_batch`` counts: one batch after its outputs were acknowledged."""

    topics_of_records: list[str]  # the topic of every live (not replayed) consumed record
    readings: ReadingBatch
    result: ProcessResult  # indexed like ``readings``
    rejections: list[Rejection]  # one dead letter each
    duration_s: float
    stage_s: dict[str, float]
    published_ms: int


def record_batch(stats: RunStats, topics: TopicSettings, batch: FinishedBatch) -> BatchReport:
    """Count a finished batch into ``stats`` and describe it for monitors."""
    c = stats.counters
    result, dead = batch.result, len(batch.rejections)
    c.update(result.counters)
    c["consumed"] += len(batch.topics_of_records)
    c["dead_letters"] += dead
    for r in batch.rejections:
        c[f"dead_letter_{r.error_class}"] += 1
    stats.batches += 1
    return BatchReport(
        consumed=len(batch.topics_of_records),
        readings=len(batch.readings),
        dead_letters=dead,
        forecasts=len(result.forecasts),
        anomalies=len(result.anomalies),
        duration_s=batch.duration_s,
        counters=result.counters,
        readings_batch=batch.readings,
        result=result,
        consumed_by_topic=dict(Counter(batch.topics_of_records)),
        produced={
            topics.forecasts: len(result.forecasts),
            topics.anomalies: len(result.anomalies),
            topics.dead_letters: dead,
        },
        dead_letter_reasons=Counter(r.error_class for r in batch.rejections),
        stage_s=batch.stage_s,
        published_ms=batch.published_ms,
    )


@dataclass(slots=True)
class _Work:
    """A decoded and processed batch, before delivery."""

    route: Routing
    out: TaskOutput
    rejections: list[Rejection]  # decoder's (live records only) + core's, by batch index
    topics_of_records: list[str]
    stage_s: dict[str, float]
    key_mismatch: int = 0


class BatchStep:
    """Runs batches through the partition tasks and delivers their outputs (both engines)."""

    def __init__(
        self,
        topics: TopicSettings,
        processing: ProcessingSettings,
        tasks: TaskSet,
        delivery: Delivery,
        stats: RunStats,
        *,
        clock: Callable[[], float] = time.time,
        failpoints: Failpoints | None = None,
        unframer: Unframer | None = None,
        key_check: str = "dead_letter",
    ) -> None:
        self.topics = topics
        self.processing = processing
        self.tasks = tasks
        self.delivery = delivery
        self.stats = stats
        self.clock = clock
        self.failpoints = failpoints or Failpoints({})
        self._contract = {topics.meter: METER, topics.scada: SCADA}
        self.unframer = unframer or Unframer(SchemaRegistrySettings(), self._contract)
        self.key_check = key_check

    def run(self, batch: Consumed, engine: Engine, stop: threading.Event) -> BatchReport:
        """Process, deliver and commit one batch; returns its report (not yet sent anywhere)."""
        started = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        plain, framing = self._unframe(batch, engine, stop)
        work = self._process(batch, plain, framing, engine, now_ms)
        self.failpoints.hit("after_process")
        t_deliver = time.perf_counter()
        result = work.out.result
        dead = [dead_letter(batch, r, now_ms) for r in work.rejections]
        readings = accepted(work.out.readings, result)
        outputs = Outputs(result, dead, readings, now_ms, work.out.errors)
        route = work.route
        self.delivery.deliver(outputs, lambda recs: engine.publish(recs, route), engine.pause, stop)
        published_ms = int(self.clock() * 1000)
        t_commit = time.perf_counter()
        work.stage_s["deliver"] = t_commit - t_deliver
        if engine.commits_per_batch:
            engine.commit(route)
            work.stage_s["commit"] = time.perf_counter() - t_commit
        finished = FinishedBatch(
            work.topics_of_records, work.out.readings, result, work.rejections,
            time.perf_counter() - started, work.stage_s, published_ms,
        )
        report = record_batch(self.stats, self.topics, finished)
        if work.key_mismatch:  # the step's own count, beside the core's
            report.counters = Counter({**report.counters, "key_mismatch": work.key_mismatch})
        report.state_events = engine.state_events()
        report.forecast_apes = work.out.apes
        report.forecasts_awaiting = self.tasks.forecasts_awaiting
        return report

    def _unframe(
        self, batch: Consumed, engine: Engine, stop: threading.Event
    ) -> tuple[list[bytes | None], dict[int, Rejection]]:
        """Unframe registry records; while the registry is unreachable, hold input and retry."""
        backoff, held = 0.5, False
        monitor = self.delivery.monitor
        try:
            while True:
                try:
                    unframed = self.unframer.unframe(batch.values, batch.topics)
                    if held:
                        monitor.input_status("schema_registry", None)
                    return unframed
                except RegistryUnavailable as exc:
                    if stop.is_set():
                        raise
                    self.stats.counters["schema_registry_retries"] += 1
                    monitor.input_status("schema_registry", str(exc)[:300])
                    log.warning("retrying in %.1f s: %s", backoff, exc)
                    if not held:
                        engine.pause.hold()
                        held = True
                    engine.pause.wait(backoff, stop)
                    backoff = min(backoff * 2, 30.0)
        finally:
            if held:
                engine.pause.release()

    def _decode(
        self, batch: Consumed, plain: list[bytes | None], framing: dict[int, Rejection],
        now_ms: int,
    ) -> tuple[ReadingBatch, list[Rejection], int]:
        """The batch's valid readings, a rejection for each record that is not one, and how many
        readings were keyed by another id than their entity's."""
        p = self.processing
        decoded = decode_batch(
            plain,
            [self._contract[t] for t in batch.topics],
            now_ms=now_ms,
            max_age_ms=p.max_age_s * 1000,
            max_future_ms=p.max_future_s * 1000,
        )
        # an unframing rejection stands where the decoder saw None
        rejections = [framing.get(r.src_index, r) for r in decoded.rejections]
        readings, wrong_keys = check_keys(decoded.readings, batch.keys, self.key_check)
        if wrong_keys:
            self.stats.counters["key_mismatch"] += len(wrong_keys)
            if self.key_check == "dead_letter":
                rejections = sorted(rejections + wrong_keys, key=lambda r: r.src_index)
            else:
                log.warning("%d readings keyed by another id, e.g. %s", len(wrong_keys),
                            wrong_keys[0].error)
        return readings, rejections, len(wrong_keys)

    def _process(
        self,
        batch: Consumed,
        plain: list[bytes | None],
        framing: dict[int, Rejection],
        engine: Engine,
        now_ms: int,
    ) -> _Work:
        t_decode = time.perf_counter()
        route = Routing(batch.topics, batch.partitions, batch.offsets, engine.replay_until())
        engine.begin(route)
        readings, rejections, mismatched = self._decode(batch, plain, framing, now_ms)
        t_process = time.perf_counter()
        replay = route.replay
        out = self.tasks.process(
            readings,
            route.task[readings.src_index],
            route.tids,
            now_ms,
            replay[readings.src_index] if replay is not None else None,
        )
        topics = batch.topics
        if replay is not None:  # replayed records were published and dead-lettered before
            self.stats.counters["replayed"] += int(replay.sum())
            rejections = [r for r in rejections if not replay[r.src_index]]
            topics = [t for t, again in zip(topics, replay.tolist(), strict=True) if not again]
        for ev in out.result.drift_events:
            log.warning(
                "drift: %s on %s readings (%s): %s",
                ev.detector, ev.entity_kind, ev.entity_id, ev.detail,
            )
        if out.result.counters.get("dropped_duplicate"):
            log.debug("dropped %d exact duplicates", out.result.counters["dropped_duplicate"])
        stage_s = {"decode": t_process - t_decode, "process": time.perf_counter() - t_process}
        # both rejection lists index the consumed batch
        return _Work(route, out, rejections + out.result.rejections, topics, stage_s, mismatched)


class Routing:
    """Where each consumed record goes: its partition's task, and whether it is a replay."""

    __slots__ = ("tids", "task", "replay", "positions", "_live_end")

    def __init__(
        self,
        topics: Sequence[str],
        partitions: Sequence[int],
        offsets: Sequence[int],
        replay_until: Mapping[TaskId, int],
    ) -> None:
        index: dict[TaskId, int] = {}
        self.tids: list[TaskId] = []
        task = np.empty(len(topics), dtype=np.int64)
        for i, tid in enumerate(zip(topics, partitions, strict=True)):
            t = index.get(tid)
            if t is None:
                t = index[tid] = len(self.tids)
                self.tids.append(tid)
            task[i] = t
        offs = np.asarray(offsets, dtype=np.int64)
        self.task = task
        self.replay: np.ndarray | None = None
        if replay_until and any(tid in replay_until for tid in self.tids):
            bound = np.array([replay_until.get(tid, -1) for tid in self.tids], dtype=np.int64)
            self.replay = offs < bound[task]
        # next offset per task, and the same over live (not replayed) records for the commit
        ends = np.full(len(self.tids), -1, dtype=np.int64)
        np.maximum.at(ends, task, offs + 1)
        self.positions = {tid: int(ends[t]) for t, tid in enumerate(self.tids)}
        live_end = ends
        if self.replay is not None:
            live_end = np.full(len(self.tids), -1, dtype=np.int64)
            live = ~self.replay
            np.maximum.at(live_end, task[live], offs[live] + 1)
        self._live_end = live_end

    def commit_offsets(self, assigned: set[TaskId]) -> list[tuple[str, int, int]]:
        """(topic, partition, next offset) to commit: partitions with live records still held."""
        return [
            (tid[0], tid[1], int(self._live_end[t]))
            for t, tid in enumerate(self.tids)
            if self._live_end[t] >= 0 and tid in assigned
        ]


def accepted(readings: ReadingBatch, result: ProcessResult) -> ReadingBatch:
    """Readings for the ``readings`` table: all but those the core rejected.

    A conflicting duplicate must not overwrite the value analysts already have; an exact
    duplicate may stay, ClickHouse collapses it onto the same key.
    """
    if not result.rejections:
        return readings
    rejected = np.array([r.src_index for r in result.rejections], dtype=np.int64)
    return readings.take(~np.isin(readings.src_index, rejected))


def dead_letter(batch: Consumed, rejection: Rejection, now_ms: int) -> DeadLetterRecord:
    i = rejection.src_index
    return DeadLetterRecord(
        source_topic=batch.topics[i],
        source_partition=batch.partitions[i],
        source_offset=batch.offsets[i],
        key=batch.keys(i),
        raw=batch.values[i] or b"",
        error_class=rejection.error_class,
        error=rejection.error,
        dead_lettered_ms=now_ms,
    )


def check_keys(
    readings: ReadingBatch, keys: Callable[[int], bytes | None], policy: str
) -> tuple[ReadingBatch, list[Rejection]]:
    """Readings whose Kafka key is not their entity id (which splits an entity's state over
    partitions): with ``dead_letter`` they leave the batch as ``key_mismatch`` rejections; with
    ``count`` they stay and are returned for counting only; ``off`` checks nothing."""
    if policy == "off" or len(readings) == 0:
        return readings, []
    src = readings.src_index.tolist()
    wrong = [
        j for j, (eid, i) in enumerate(zip(readings.entity.tolist(), src, strict=True))
        if keys(i) != eid.encode()
    ]
    if not wrong:
        return readings, []
    found = [
        Rejection(src[j], "key_mismatch", f"key {keys(src[j])!r} is not the entity id "
                  f"{readings.entity[j]!r}; records of one entity must share its id as key")
        for j in wrong
    ]
    if policy != "dead_letter":
        return readings, found
    keep = np.ones(len(readings), dtype=bool)
    keep[wrong] = False
    return readings.take(keep), found
