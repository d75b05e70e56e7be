"""The processor loop on confluent-kafka: consume a batch, run the batch step, commit.

Per batch: ``consume(n, timeout)`` -> ``streams.runtime.batch.BatchStep`` (decode, each
partition's core, dead letters, delivery in the guarantee's order) -> commit the batch's offsets
synchronously (at-least-once), or publish and commit them in one Kafka transaction
(exactly-once). A sink that is down pauses the assigned partitions while the same outputs are
retried with backoff (``streams.runtime.delivery``); nothing is committed until they are written.
SIGTERM/SIGINT finish the batch and exit.

Partition state is checkpointed and restored by ``streams.state.recovery``; the loop is
synchronous, so between batches every task's state matches its committed offset exactly.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from models.ensemble import NowcastEnsemble
from models.exceptions import ModelError
from models.features import FEATURE_NAMES
from models.processor import GridProcessor
from models.promotion import ModelStoreWatcher
from sinks.clickhouse import ClickHouseSink
from sinks.exceptions import SinkError
from sinks.topics import TopicSink
from sinks.transactions import TransactionalTopics
from streams.config import Settings
from streams.ops.monitor import NullMonitor, RunnerMonitor
from streams.ops.report import BatchReport
from streams.runtime.batch import BatchStep, Consumed, Routing, RunStats
from streams.runtime.commits import commit_or_defer
from streams.runtime.delivery import Delivery, TopicRecords
from streams.runtime.failpoints import Failpoints
from streams.runtime.fairness import FairBuffer
from streams.runtime.registry import Unframer, output_frames
from streams.runtime.topics import ensure_topics
from streams.state.checkpoints import CheckpointStore
from streams.state.layout import PartitionLayout
from streams.state.recovery import PartitionStates
from streams.state.tasks import TaskId, TaskSet

log = logging.getLogger("gridstream.runner")

__all__ = ["RunStats", "StreamRunner", "ensure_topics", "as_task_set"]


def as_task_set(settings: Settings, processor: TaskSet | GridProcessor | None) -> TaskSet:
    """The partition tasks an engine runs: a ``GridProcessor`` stands for its parameters and
    model set, and becomes one core per partition like every other."""
    if isinstance(processor, TaskSet):
        return processor
    return TaskSet(
        processor.params if processor else settings.processing.params(),
        processor.forecaster.ensemble if processor else None,
    )


class StreamRunner:
    """Runs the partition tasks against Kafka topics; clients are created on ``run``.

    The caller applies the ClickHouse schema (``ClickHouseSink.ensure_schema``) before ``run``.
    ``failpoints`` and ``transactional_id`` are passed in by the CLI (``streams.service``);
    without them no failpoint is armed and the id is ``<group_id>-<hostname>``.
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
        failpoints: Failpoints | None = None,
        transactional_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.processor = as_task_set(settings, processor)
        p, k = settings.processing, settings.kafka
        store = CheckpointStore(p.state_dir, k.group_id) if p.state_dir else None
        self.states = PartitionStates(self.processor, store, p.checkpoint_interval_s)
        self.layout = PartitionLayout(store.dir if store else None, p.on_partition_change)
        self.exactly_once = k.processing_guarantee == "exactly_once"
        self.transactional_id = transactional_id or k.default_transactional_id(socket.gethostname())
        self.failpoints = failpoints or Failpoints({})
        self.clickhouse = clickhouse
        self.on_batch = on_batch
        self.monitor: RunnerMonitor = monitor or NullMonitor()
        self.stats = RunStats()
        delivery = Delivery(
            k.processing_guarantee,
            settings.topics,
            clickhouse,
            self.monitor,
            self.stats.counters,
            self.failpoints,
            max_backoff_s,
        )
        self.step = BatchStep(
            settings.topics,
            p,
            self.processor,
            delivery,
            self.stats,
            clock=clock,
            failpoints=self.failpoints,
            unframer=Unframer(
                settings.schema_registry, {settings.topics.meter: "meter",
                                           settings.topics.scada: "scada"}
            ),
            key_check=k.key_check,
        )
        self._consumer: Consumer | None = None
        self._topics: TopicSink | None = None
        self._txn: TransactionalTopics | None = None
        self._stop = threading.Event()
        self.assigned: set[tuple[str, int]] = set()
        self._watcher: ModelStoreWatcher | None = None
        self._fair = FairBuffer(k.batch_size)
        self.commits_per_batch = True
        self.pause = _PausePartitions(self)

    # -- clients -----------------------------------------------------------------------------
    def consumer_config(self) -> dict[str, object]:
        """The consumer's librdkafka settings: monitor callbacks < ``KafkaSettings``."""
        return {**self.monitor.kafka_config("consumer"), **self.settings.kafka.consumer_config()}

    def producer_config(self) -> dict[str, object]:
        return {**self.monitor.kafka_config("producer"), **self.settings.kafka.producer_config()}

    def transactional_config(self) -> dict[str, object]:
        """The exactly-once producer: one stable transactional id per worker."""
        return {
            **self.monitor.kafka_config("producer"),
            **self.settings.kafka.transactional_config(self.transactional_id),
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
        for topic in self.layout.check(_partition_counts(consumer, {p.topic for p in parts})):
            self.states.reset_topic(topic)
        committed = consumer.committed(parts, timeout=30) if parts else []
        seeks = self.states.assign(
            {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else -1) for tp in committed}
        )
        if seeks:  # start replays below the committed offset: assign with explicit offsets
            for p in parts:
                p.offset = seeks.get((p.topic, p.partition), p.offset)
        # cooperative protocols add partitions to the assignment, eager ones replace it; without
        # a call here the client would do the same with the committed offsets
        if self.settings.kafka.assignment_strategy == "cooperative-sticky":
            consumer.incremental_assign(parts)
        elif seeks:
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
        stop = self._stop = stop or threading.Event()
        if self.settings.kafka.create_topics:
            ensure_topics(self.settings)
        self.step.delivery.frames = output_frames(
            self.settings.schema_registry, self.settings.topics
        )
        consumer, topics = self._make_clients()
        self._consumer, self._topics = consumer, topics
        t = self.settings.topics
        consumer.subscribe(
            [t.meter, t.scada],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,  # state is checkpointed per partition either way
        )
        self.monitor.loop_started()
        error: BaseException | None = None
        try:
            self._loop(consumer, stop, idle_exit_s)
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

    def _loop(self, consumer: Consumer, stop: threading.Event, idle_exit_s: float | None) -> None:
        k = self.settings.kafka
        poll_s = self.settings.processing.models_poll_s
        last_input = time.monotonic()
        self.reload_models()
        next_model_poll = time.monotonic() + poll_s
        while not stop.is_set():
            if time.monotonic() >= next_model_poll:  # between batches: never mid-batch
                self.reload_models()
                next_model_poll = time.monotonic() + poll_s
            ready = len(self._fair) >= k.batch_size  # a full batch waits: do not wait more
            msgs = consumer.consume(self._fair.limit, 0.0 if ready else k.batch_timeout_s)
            self.monitor.polled(consumer, len(msgs))
            msgs = self._fair_batch(consumer, msgs)
            if not msgs:
                if not self.assigned:
                    last_input = time.monotonic()  # idle time counts from the assignment
                elif idle_exit_s is not None and time.monotonic() - last_input > idle_exit_s:
                    return
                continue
            last_input = time.monotonic()
            self._process(msgs, stop)

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
        batch = Consumed(
            [m.value() for m in good],
            [m.topic() for m in good],
            [m.partition() for m in good],
            [m.offset() for m in good],
            lambda i: good[i].key(),
        )
        report = self.step.run(batch, self, stop)
        report.partitions = dict(Counter(zip(batch.topics, batch.partitions, strict=True)))
        report.buffered = {tp: self._fair.buffered(tp) for tp in self.assigned}
        self.monitor.batch_done(report, self._consumer)
        if self.on_batch is not None:
            self.on_batch(report)

    # -- the batch step's engine port ---------------------------------------------------------
    def replay_until(self) -> Mapping[TaskId, int]:
        return self.states.replay_until

    def begin(self, route: Routing) -> None:
        self.states.in_flight.update(route.tids)

    def publish(self, records: TopicRecords, route: Routing) -> None:
        assert self._consumer is not None and self._topics is not None
        if self._txn is None:
            self._topics.publish(records)
            return
        offsets = _partitions(route.commit_offsets(self.assigned))
        if not offsets and not any(recs for _, recs in records):
            return  # a batch of replays only: nothing to publish, nothing to commit
        self._txn.publish(
            records,
            offsets,
            self._consumer.consumer_group_metadata(),
            before_commit=lambda: self.failpoints.hit("before_commit"),
        )

    def commit(self, route: Routing) -> None:
        """At-least-once commits here; exactly-once committed inside the transaction."""
        assert self._consumer is not None
        if not self.exactly_once:
            self.failpoints.hit("before_commit")
            offsets = _partitions(route.commit_offsets(self.assigned))
            if offsets:
                self._commit(offsets)
        self.failpoints.hit("after_commit")
        self.states.advance(route.positions)
        self.states.checkpoint_one_due()

    def _commit(self, offsets: list[TopicPartition]) -> None:
        assert self._consumer is not None
        err = commit_or_defer(self._consumer, offsets)
        if err is not None:
            self.stats.counters["commit_failures"] += 1
            self.monitor.consumer_error(err)

    def state_events(self) -> dict[str, int]:
        return {**self.states.counters, "replayed": self.stats.counters["replayed"]}


class _PausePartitions:
    """While an output is retried: pause the assigned partitions, keep polling (stay in the
    group, serve rebalance callbacks), resume once the outputs are written."""

    def __init__(self, runner: StreamRunner) -> None:
        self.runner = runner

    def hold(self) -> None:
        consumer = self.runner._consumer
        assert consumer is not None
        consumer.pause(consumer.assignment())

    def wait(self, seconds: float, stop: threading.Event) -> None:
        consumer = self.runner._consumer
        assert consumer is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            consumer.poll(min(0.2, seconds))
            self.runner.monitor.polled(consumer, 0)

    def release(self) -> None:
        consumer = self.runner._consumer
        assert consumer is not None
        fair = self.runner._fair.paused  # those resume when their buffer drains
        consumer.resume(
            [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in fair]
        )


def _partition_counts(consumer: Consumer, topics: set[str]) -> dict[str, int]:
    """The current partition count of each topic, from the cluster's metadata."""
    found = {t: consumer.list_topics(t, timeout=10).topics.get(t) for t in topics}
    return {t: len(meta.partitions) for t, meta in found.items() if meta and meta.partitions}


def _partitions(offsets: list[tuple[str, int, int]]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for topic, partition, offset in offsets]
