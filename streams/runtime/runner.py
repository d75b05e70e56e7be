"""The processor loop on confluent-kafka: consume a batch, process it, publish, then commit.

Per batch: ``consume(n, timeout)`` -> decode + validate (bad records become dead letters) ->
each partition's core (``streams.state.tasks``) -> produce forecasts, anomalies and dead letters and
wait for every acknowledgement -> ClickHouse insert -> commit the batch's offsets synchronously
(at-least-once); or ClickHouse insert -> publish and commit the offsets in one Kafka transaction
(exactly-once). A sink that
is down pauses the assigned partitions and retries the same outputs with backoff; nothing is
committed until they are written. SIGTERM/SIGINT finish the batch and exit.

Partition state is checkpointed and restored by ``streams.state.recovery``; the loop is
synchronous, so between batches every task's state matches its committed offset exactly.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from models.ensemble import NowcastEnsemble
from models.exceptions import ModelError
from models.features import FEATURE_NAMES
from models.processor import GridProcessor, ProcessResult
from models.promotion import ModelStoreWatcher
from schemas.batch import DeadLetterRecord, ReadingBatch, Rejection
from schemas.decode import METER, SCADA, decode_batch
from sinks.clickhouse import ClickHouseSink
from sinks.encode import encode_anomalies, encode_dead_letters, encode_forecasts
from sinks.exceptions import SinkError
from sinks.topics import TopicSink
from sinks.transactions import TransactionalTopics
from streams.config import Settings, TopicSettings
from streams.ops.monitor import NullMonitor, RunnerMonitor
from streams.ops.report import BatchReport
from streams.runtime.failpoints import Failpoints
from streams.runtime.fairness import FairBuffer
from streams.state.checkpoints import CheckpointStore
from streams.state.recovery import PartitionStates
from streams.state.tasks import TaskId, TaskSet

log = logging.getLogger("gridstream.runner")

# Commit errors that mean "not now": the group coordinator or the broker is unreachable.
_RETRY_COMMIT = frozenset(
    {
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
    }
)


@dataclass(slots=True)
class RunStats:
    batches: int = 0
    counters: Counter[str] = field(default_factory=Counter)


def ensure_topics(settings: Settings, admin: AdminClient | None = None) -> list[str]:
    """Create the input and output topics that do not exist yet; returns the ones created."""
    admin = admin or AdminClient(settings.kafka.client_config())
    t = settings.topics
    wanted = [t.meter, t.scada, t.forecasts, t.anomalies, t.dead_letters]
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(name, settings.kafka.partitions, settings.kafka.replication_factor)
            for name in missing
        ]
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=30)
            created.append(name)
        except Exception as exc:  # noqa: BLE001 - another worker may have created it first
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
    return created


class StreamRunner:
    """Runs a ``GridProcessor`` against Kafka topics; clients are created on ``run``.

    The caller applies the ClickHouse schema (``ClickHouseSink.ensure_schema``) before ``run``.
    """

    def __init__(
        self,
        settings: Settings,
        processor: TaskSet | GridProcessor | None = None,
        clickhouse: ClickHouseSink | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[BatchReport], None] | None = None,
        max_backoff_s: float = 30.0,
        monitor: RunnerMonitor | None = None,
    ) -> None:
        self.settings = settings
        if isinstance(processor, TaskSet):
            self.processor = processor
        else:  # a GridProcessor stands for its parameters and model set: one core per partition
            self.processor = TaskSet(
                processor.params if processor else settings.processing.params(),
                processor.forecaster.ensemble if processor else None,
            )
        p = settings.processing
        store = CheckpointStore(p.state_dir, settings.kafka.group_id) if p.state_dir else None
        self.states = PartitionStates(self.processor, store, p.checkpoint_interval_s)
        self.exactly_once = settings.kafka.processing_guarantee == "exactly_once"
        self.failpoints = Failpoints.from_env()
        self.clickhouse = clickhouse
        self.clock = clock
        self.on_batch = on_batch
        self.max_backoff_s = max_backoff_s
        self.monitor: RunnerMonitor = monitor or NullMonitor()
        self.stats = RunStats()
        t = settings.topics
        self._contract = {t.meter: METER, t.scada: SCADA}
        self._consumer: Consumer | None = None
        self._topics: TopicSink | None = None
        self._txn: TransactionalTopics | None = None
        self.assigned: set[tuple[str, int]] = set()
        self._watcher: ModelStoreWatcher | None = None
        self._fair = FairBuffer(settings.kafka.batch_size)

    # -- clients -----------------------------------------------------------------------------
    def consumer_config(self) -> dict[str, object]:
        """The consumer's librdkafka settings: monitor callbacks < security/extra < fixed."""
        k = self.settings.kafka
        static = {"group.instance.id": k.instance_id()} if k.static_membership else {}
        return {
            **self.monitor.kafka_config("consumer"),
            "fetch.wait.max.ms": k.fetch_wait_max_ms,  # a default: EXTRA may override it
            **k.client_config(),
            "group.id": k.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": k.auto_offset_reset,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "session.timeout.ms": k.session_timeout_ms,
            "heartbeat.interval.ms": max(100, k.session_timeout_ms // 5),
            **static,
        }

    def producer_config(self) -> dict[str, object]:
        return {
            **self.monitor.kafka_config("producer"),
            **self.settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
        }

    def transactional_config(self) -> dict[str, object]:
        """The exactly-once producer: one stable transactional id per worker."""
        k = self.settings.kafka
        txn_id = k.transactional_id or f"{k.group_id}-{socket.gethostname()}"
        return {
            **self.producer_config(),
            "transactional.id": txn_id,
            "transaction.timeout.ms": 60_000,
        }

    def _make_clients(self) -> tuple[Consumer, TopicSink]:
        if self.exactly_once:
            self._txn = TransactionalTopics(Producer(self.transactional_config()))
            return Consumer(self.consumer_config()), TopicSink(self._txn.producer)
        return Consumer(self.consumer_config()), TopicSink(Producer(self.producer_config()))

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._fair.drop((p.topic, p.partition) for p in parts)  # fresh positions follow
        self.assigned.update((p.topic, p.partition) for p in parts)
        self.stats.counters["rebalances"] += 1
        committed = consumer.committed(parts, timeout=30) if parts else []
        seeks = self.states.assign(
            {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else -1) for tp in committed}
        )
        if seeks:  # start replays below the committed offset: assign with explicit offsets
            for p in parts:
                p.offset = seeks.get((p.topic, p.partition), p.offset)
            consumer.assign(parts)
        self.monitor.assigned([(p.topic, p.partition) for p in parts])
        log.info("assigned %s; replaying %s", sorted(self.assigned), seeks or "nothing")

    def _on_revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Offsets are committed synchronously after every batch, so nothing is pending here.
        revoked = [(p.topic, p.partition) for p in parts]
        self._fair.drop(revoked)  # uncommitted: the next owner reads them from the commit
        self.states.revoke(revoked)
        self.assigned.difference_update(revoked)
        self.monitor.revoked(revoked)
        log.info("revoked %s", revoked)

    # -- loop --------------------------------------------------------------------------------
    def run(
        self, stop: threading.Event | None = None, idle_exit_s: float | None = None
    ) -> RunStats:
        """Process until ``stop`` is set (or no input for ``idle_exit_s``); returns the totals."""
        stop = stop or threading.Event()
        if self.settings.kafka.create_topics:
            ensure_topics(self.settings)
        consumer, topics = self._make_clients()
        self._consumer, self._topics = consumer, topics
        t = self.settings.topics
        consumer.subscribe([t.meter, t.scada], on_assign=self._on_assign, on_revoke=self._on_revoke)
        k = self.settings.kafka
        last_input = time.monotonic()
        self.monitor.loop_started()
        self.reload_models()
        next_model_poll = time.monotonic() + self.settings.processing.models_poll_s
        error: BaseException | None = None
        try:
            while not stop.is_set():
                if time.monotonic() >= next_model_poll:  # between batches: never mid-batch
                    self.reload_models()
                    next_model_poll = time.monotonic() + self.settings.processing.models_poll_s
                ready = len(self._fair) >= k.batch_size  # a full batch waits: do not wait more
                msgs = consumer.consume(self._fair.limit, 0.0 if ready else k.batch_timeout_s)
                self.monitor.polled(consumer, len(msgs))
                msgs = self._fair_batch(consumer, msgs)
                if not msgs:
                    if not self.assigned:
                        last_input = time.monotonic()  # idle time counts from the assignment
                    elif idle_exit_s is not None and time.monotonic() - last_input > idle_exit_s:
                        break
                    continue
                last_input = time.monotonic()
                self._process(msgs, stop)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if error is None:
                self.states.checkpoint_all()  # a clean stop resumes with no replay
            consumer.close()  # leaves the group; every processed batch is already committed
            topics.producer.flush(10)
            self.monitor.loop_stopped(error)
        return self.stats

    def _fair_batch(self, consumer: Consumer, msgs: list[Message]) -> list[Message]:
        """Errors as they came, then a batch with a fair share of every partition's records."""
        errors = [m for m in msgs if m.error() is not None]
        full = self._fair.add(m for m in msgs if m.error() is None)
        if full:
            consumer.pause([TopicPartition(t, p) for t, p in full])
        batch = self._fair.take()
        low = [tp for tp in self._fair.resumable() if tp in self.assigned]
        if low:
            consumer.resume([TopicPartition(t, p) for t, p in low])
        return errors + batch

    def reload_models(self) -> bool:
        """Adopt a newly promoted model set from the store, if one is configured and changed.

        A set that fails verification or does not fit keeps the previous one serving and makes
        health degraded; returns True when a new set was adopted.
        """
        store = self.settings.processing.models_dir
        if store is None:
            return False
        if self._watcher is None:
            self._watcher = ModelStoreWatcher(store, FEATURE_NAMES)
        loaded = self._watcher.poll()
        problem = self._watcher.last_error
        if loaded is not None:
            try:
                self.processor.set_ensemble(NowcastEnsemble(loaded))
                log.info("serving model set %s from %s", loaded.ref, store)
            except ModelError as exc:
                problem = f"{loaded.ref}: {exc}"
                loaded = None
        if problem:
            log.warning("model store %s: %s", store, problem)
        self.monitor.models_status(problem)
        return loaded is not None

    def _process(self, msgs: list[Message], stop: threading.Event) -> None:
        started = time.perf_counter()
        good: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal():
                raise SinkError(f"fatal consumer error: {err.str()}")
            else:
                self.stats.counters["consumer_errors"] += 1
                self.monitor.consumer_error(err)
                log.warning("consumer error: %s", err.str())
        if not good:
            return
        now_ms = int(self.clock() * 1000)
        p = self.settings.processing
        route = _Routing(good, self.states.replay_until)
        self.states.in_flight.update(route.tids)
        t_decode = time.perf_counter()
        decoded = decode_batch(
            [m.value() for m in good],
            [self._contract[m.topic()] for m in good],
            now_ms=now_ms,
            max_age_ms=p.max_age_s * 1000,
            max_future_ms=p.max_future_s * 1000,
        )
        readings = decoded.readings
        t_process = time.perf_counter()
        replay = route.replay[readings.src_index] if route.replay is not None else None
        out = self.processor.process(
            readings, route.task[readings.src_index], route.tids, now_ms, replay
        )
        readings, result = out.readings, out.result  # the live rows; result is indexed like them
        replayed_records = 0
        if route.replay is not None:  # replayed records were published and dead-lettered before
            replayed_records = int(route.replay.sum())
            self.stats.counters["replayed"] += replayed_records
            decoded_rejections = [r for r in decoded.rejections if not route.replay[r.src_index]]
        else:
            decoded_rejections = decoded.rejections
        self.failpoints.hit("after_process")
        for ev in result.drift_events:
            log.warning(
                "drift: %s on %s readings (%s): %s",
                ev.detector,
                ev.entity_kind,
                ev.entity_id,
                ev.detail,
            )
        t_deliver = time.perf_counter()
        rejections = decoded_rejections + result.rejections  # both index the consumed batch
        dead = [_dead_letter(good[r.src_index], r, now_ms) for r in rejections]
        accepted = _accepted(readings, result)
        offsets = route.commit_offsets(self.assigned)
        self._deliver(result, dead, now_ms, stop, accepted, offsets)
        published_ms = int(self.clock() * 1000)
        t_commit = time.perf_counter()
        if not self.exactly_once:  # exactly-once committed the offsets inside the transaction
            self.failpoints.hit("before_commit")
            if offsets:
                self._commit(offsets)
        self.failpoints.hit("after_commit")
        self.states.advance(route.positions)
        self.states.checkpoint_one_due()
        t_end = time.perf_counter()
        if result.counters.get("dropped_duplicate"):
            log.debug("dropped %d exact duplicates", result.counters["dropped_duplicate"])
        report = record_batch(
            self.stats,
            self.settings.topics,
            consumed=len(good) - replayed_records,
            topics_of_records=[  # replayed records were counted in the life that read them
                m.topic() for i, m in enumerate(good) if route.replay is None or not route.replay[i]
            ],
            readings=readings,
            result=result,
            dead=len(dead),
            rejections=rejections,
            duration_s=t_end - started,
            stage_s={
                "decode": t_process - t_decode,
                "process": t_deliver - t_process,
                "deliver": t_commit - t_deliver,
                "commit": t_end - t_commit,
            },
            published_ms=published_ms,
        )
        report.state_events = {**self.states.counters, "replayed": self.stats.counters["replayed"]}
        report.partitions = dict(Counter((m.topic(), m.partition()) for m in good))
        report.buffered = {tp: self._fair.buffered(tp) for tp in self.assigned}
        report.forecast_apes = out.apes
        report.forecasts_awaiting = self.processor.forecasts_awaiting
        self.monitor.batch_done(report, self._consumer)
        if self.on_batch is not None:
            self.on_batch(report)

    def _deliver(
        self,
        result: ProcessResult,
        dead: list[DeadLetterRecord],
        now_ms: int,
        stop: threading.Event,
        accepted: ReadingBatch | None = None,
        offsets: list[TopicPartition] | None = None,
    ) -> None:
        """Write the topics and ClickHouse; while a sink is down, pause input and retry.

        At-least-once publishes to Kafka first, so subscribers see a batch's events without
        waiting for the ClickHouse insert (both are done before the commit either way).
        Exactly-once writes ClickHouse first: the transaction that publishes the records also
        commits the offsets, so nothing may follow it. ``now_ms`` stays the same across
        retries, so ClickHouse's insert tokens drop a retry that the server had in fact written.
        """
        t = self.settings.topics
        outputs = [
            (t.forecasts, encode_forecasts(result.forecasts)),
            (t.anomalies, encode_anomalies(result.anomalies)),
            (t.dead_letters, encode_dead_letters(dead)),
        ]
        kafka_rows = sum(len(records) for _, records in outputs)
        ch_rows = len(result.forecasts) + len(result.anomalies) + len(dead)
        steps: list[tuple[str, int, Callable[[], None]]] = [
            ("kafka", kafka_rows, lambda: self._publish(outputs, offsets or [])),
        ]
        if self.clickhouse is not None:
            write = (
                "clickhouse",
                ch_rows,
                lambda: self._write_clickhouse(result, dead, now_ms, accepted),
            )
            steps.insert(0 if self.exactly_once else 1, write)
        done = 0
        backoff = 0.5
        paused = False
        assert self._consumer is not None and self._topics is not None
        try:
            while True:
                try:
                    while done < len(steps):
                        sink, rows, step = steps[done]
                        self._timed(sink, rows, step)
                        done += 1
                        if done < len(steps):
                            self.failpoints.hit("between_outputs")
                    return
                except SinkError as exc:
                    if not exc.retryable or stop.is_set():
                        raise
                    self.stats.counters["sink_retries"] += 1
                    log.warning("output failed, retrying in %.1f s: %s", backoff, exc)
                    if not paused:
                        self._consumer.pause(self._consumer.assignment())
                        paused = True
                    deadline = time.monotonic() + backoff
                    while time.monotonic() < deadline and not stop.is_set():
                        self._consumer.poll(min(0.2, backoff))  # stay in the group while paused
                        self.monitor.polled(self._consumer, 0)
                    backoff = min(backoff * 2, self.max_backoff_s)
        finally:
            if paused:  # not those paused for fairness: they resume when their buffer drains
                self._consumer.resume(
                    [
                        tp
                        for tp in self._consumer.assignment()
                        if (tp.topic, tp.partition) not in self._fair.paused
                    ]
                )

    def _publish(self, outputs: list[tuple[str, list]], offsets: list[TopicPartition]) -> None:
        assert self._consumer is not None and self._topics is not None
        if self._txn is None:
            self._topics.publish(outputs)
            return
        self._txn.publish(
            outputs,
            offsets,
            self._consumer.consumer_group_metadata(),
            before_commit=lambda: self.failpoints.hit("before_commit"),
        )

    def _timed(self, sink: str, rows: int, write: Callable[[], None]) -> None:
        """Run one output write and tell the monitor how long it took and how it ended."""
        started = time.perf_counter()
        try:
            write()
        except SinkError as exc:
            self.monitor.output(sink, rows, time.perf_counter() - started, exc)
            raise
        self.monitor.output(sink, rows, time.perf_counter() - started, None)

    def _write_clickhouse(
        self,
        result: ProcessResult,
        dead: list[DeadLetterRecord],
        now_ms: int,
        accepted: ReadingBatch | None,
    ) -> None:
        assert self.clickhouse is not None
        self.clickhouse.write(result.forecasts, result.anomalies, dead, now_ms, readings=accepted)
        if result.drift_events:
            self.clickhouse.write_drift_events(result.drift_events)

    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Commit, or leave it to the next batch when the broker cannot take it now.

        Commits are cumulative: the next successful one covers these offsets, and until then a
        restart replays the batch, which every output absorbs. A broker that went away (no
        coordinator, transport down) must not end the processor; a fatal error still does.
        """
        assert self._consumer is not None
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.fatal() or not (err.retriable() or err.code() in _RETRY_COMMIT):
                raise
            self.stats.counters["commit_failures"] += 1
            self.monitor.consumer_error(err)
            log.warning("offset commit failed, left to the next batch: %s", err.str())


class _Routing:
    """Where each consumed record goes: its partition's task, and whether it is a replay."""

    __slots__ = ("tids", "task", "replay", "positions", "_live_end")

    def __init__(self, msgs: list[Message], replay_until: dict[TaskId, int]) -> None:
        index: dict[TaskId, int] = {}
        self.tids: list[TaskId] = []
        task = np.empty(len(msgs), dtype=np.int64)
        offsets = np.empty(len(msgs), dtype=np.int64)
        for i, m in enumerate(msgs):
            tid = (m.topic(), m.partition())
            t = index.get(tid)
            if t is None:
                t = index[tid] = len(self.tids)
                self.tids.append(tid)
            task[i] = t
            offsets[i] = m.offset()
        self.task = task
        self.replay: np.ndarray | None = None
        if replay_until and any(tid in replay_until for tid in self.tids):
            bound = np.array([replay_until.get(tid, -1) for tid in self.tids], dtype=np.int64)
            self.replay = offsets < bound[task]
        # next offset per task, and the same over live (not replayed) records for the commit
        ends = np.full(len(self.tids), -1, dtype=np.int64)
        np.maximum.at(ends, task, offsets + 1)
        self.positions = {tid: int(ends[t]) for t, tid in enumerate(self.tids)}
        live_end = ends
        if self.replay is not None:
            live_end = np.full(len(self.tids), -1, dtype=np.int64)
            live = ~self.replay
            np.maximum.at(live_end, task[live], offsets[live] + 1)
        self._live_end = live_end

    def commit_offsets(self, assigned: set[TaskId]) -> list[TopicPartition]:
        """Offsets to commit: partitions with live records that this worker still holds."""
        return [
            TopicPartition(tid[0], tid[1], int(self._live_end[t]))
            for t, tid in enumerate(self.tids)
            if self._live_end[t] >= 0 and tid in assigned
        ]


def record_batch(
    stats: RunStats,
    topics: TopicSettings,
    *,
    consumed: int,
    topics_of_records: list[str],
    readings: ReadingBatch,
    result: ProcessResult,
    dead: int,
    rejections: list[Rejection],
    duration_s: float,
    stage_s: dict[str, float],
    published_ms: int,
) -> BatchReport:
    """Count a finished batch into ``stats`` and describe it for monitors (both engines)."""
    c = stats.counters
    c.update(result.counters)
    c["consumed"] += consumed
    c["dead_letters"] += dead
    for r in rejections:
        c[f"dead_letter_{r.error_class}"] += 1
    stats.batches += 1
    return BatchReport(
        consumed=len(topics_of_records),
        readings=len(readings),
        dead_letters=dead,
        forecasts=len(result.forecasts),
        anomalies=len(result.anomalies),
        duration_s=duration_s,
        counters=result.counters,
        readings_batch=readings,
        result=result,
        consumed_by_topic=dict(Counter(topics_of_records)),
        produced={
            topics.forecasts: len(result.forecasts),
            topics.anomalies: len(result.anomalies),
            topics.dead_letters: dead,
        },
        dead_letter_reasons=Counter(r.error_class for r in rejections),
        stage_s=stage_s,
        published_ms=published_ms,
    )


def _accepted(readings: ReadingBatch, result: ProcessResult) -> ReadingBatch:
    """Readings for the ``readings`` table: all but those the core rejected.

    A conflicting duplicate must not overwrite the value analysts already have; an exact
    duplicate may stay, ClickHouse collapses it onto the same key.
    """
    if not result.rejections:
        return readings
    rejected = np.array([r.src_index for r in result.rejections], dtype=np.int64)
    return readings.take(~np.isin(readings.src_index, rejected))


def _dead_letter(msg: Message, rejection: Rejection, now_ms: int) -> DeadLetterRecord:
    return DeadLetterRecord(
        source_topic=msg.topic(),
        source_partition=msg.partition(),
        source_offset=msg.offset(),
        key=msg.key(),
        raw=msg.value() or b"",
        error_class=rejection.error_class,
        error=rejection.error,
        dead_lettered_ms=now_ms,
    )
