"""``gridstream run --engine faust``: the same core inside a faust-streaming worker.

For teams that already operate Faust workers. Faust (aiokafka) consumes both input topics in the
consumer group ``GRIDSTREAM_KAFKA__GROUP_ID`` with its own assignor; one agent batches events with
``stream.take_events(batch_size, within=batch_timeout_s)`` (``take`` plus the events, whose
topic/partition/offset the batch step needs) and hands each batch to one worker thread, which
runs the native runtime's batch step (``streams.runtime.batch.BatchStep``): the same decoder, one
core per input partition (``TaskSet``), the same delivery policy and output order (Kafka, then
ClickHouse, at-least-once), and the same ``TopicSink`` on a producer configured by
``KafkaSettings.producer_config`` (same keys, headers, acks and retries). No faust Tables:
window state stays in the partition tasks, which a worker keeps when a partition is revoked.
The thread keeps faust's event loop free, so heartbeats go on while a batch is written or
retried; faust's bounded buffers then hold back further fetching.

Delivery: at-least-once, as the native runtime, with one difference in *when* offsets commit.
Faust commits acknowledged offsets itself, every ``broker_commit_interval`` (2.8 s) and on
rebalance and shutdown, instead of after every batch. An event is acknowledged only once its
batch's outputs are all acknowledged by ClickHouse and Kafka: every message of a batch is
``incref``-ed before the batch runs and released only after success, so a failed or cancelled
batch is never acknowledged (``take_events`` acknowledges a batch when its generator moves on or
is closed, whatever happened in the body). So nothing is committed before it is written, but a
crash replays up to one commit interval of batches rather than one batch (more duplicates, which
ClickHouse's ``FINAL`` and the anomaly ``event_id`` absorb, as for any replay). Not available:
exactly-once topic outputs (faust's ``exactly_once`` covers only records sent through faust's own
producer), the native runtime's partition pause (faust's buffers give backpressure instead),
consumer lag in ``/metrics`` (aiokafka exposes no cached high watermark the monitor reads), and
``GRIDSTREAM_KAFKA__EXTRA`` (librdkafka options mean nothing to aiokafka; refused at start).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Producer

from models.processor import GridProcessor
from sinks.clickhouse import ClickHouseSink
from sinks.topics import TopicSink
from streams.config import ConfigError, Settings
from streams.ops.monitor import NullMonitor, RunnerMonitor
from streams.ops.report import BatchReport
from streams.runtime.batch import BatchStep, Consumed, Routing, RunStats
from streams.runtime.delivery import Delivery, TopicRecords, WaitOnly
from streams.runtime.failpoints import Failpoints
from streams.runtime.registry import Unframer, output_frames
from streams.runtime.runner import as_task_set, ensure_topics
from streams.state.tasks import TaskId, TaskSet

log = logging.getLogger("gridstream.faust")


def faust_options(settings: Settings, datadir: str) -> dict[str, Any]:
    """faust ``App`` settings from gridstream's; raises ConfigError for what faust cannot do."""
    k = settings.kafka
    if k.extra:
        raise ConfigError(
            "GRIDSTREAM_KAFKA__EXTRA holds librdkafka options, which faust's aiokafka client "
            "cannot take; unset it or use the native engine"
        )
    return {
        "broker": ";".join(f"kafka://{h.strip()}" for h in k.bootstrap_servers.split(",")),
        "broker_credentials": _credentials(settings),
        "store": "memory://",  # no Tables: window state lives in the core
        "datadir": datadir,
        "autodiscover": False,
        "web_enabled": False,  # gridstream's own /health, /metrics, /models serve instead
        "topic_disable_leader": True,
        "topic_partitions": k.partitions,
        "topic_replication_factor": k.replication_factor,
        "consumer_auto_offset_reset": k.auto_offset_reset,
        "broker_session_timeout": k.session_timeout_ms / 1000,
        "broker_heartbeat_interval": max(0.1, k.session_timeout_ms / 5000),
        "processing_guarantee": "at_least_once",
        "stream_buffer_maxsize": max(4096, k.batch_size),
        "stream_ack_exceptions": False,
        "stream_ack_cancelled_tasks": False,
    }


def _credentials(settings: Settings) -> Any:
    import faust

    k = settings.kafka
    context = None
    if k.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=k.ssl_ca_location)
        if k.ssl_certificate_location:
            context.load_cert_chain(k.ssl_certificate_location, k.ssl_key_location)
    if k.security_protocol.startswith("SASL"):
        password = k.sasl_password.get_secret_value() if k.sasl_password else None
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=password,
            ssl_context=context,
            mechanism=k.sasl_mechanism or "PLAIN",
        )
    return faust.SSLCredentials(context) if context is not None else None


class _NoLag:
    """What the monitor's lag refresh reads: aiokafka has no cached watermarks, so no lag."""

    def assignment(self) -> list[Any]:
        return []

    def position(self, _parts: list[Any]) -> list[Any]:
        return []


class FaustEngine:
    """Runs the partition tasks in a faust worker; the worker is built and started by ``run``.

    The caller applies the ClickHouse schema (``ClickHouseSink.ensure_schema``) before ``run``.
    """

    commits_per_batch = False  # faust commits acknowledged offsets on its own interval

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
    ) -> None:
        self.settings = settings
        self.processor = as_task_set(settings, processor)
        self.clickhouse = clickhouse
        self.on_batch = on_batch
        self.monitor: RunnerMonitor = monitor or NullMonitor()
        self.stats = RunStats()
        self.error: BaseException | None = None
        self.pause = WaitOnly()  # faust's bounded buffers hold back fetching meanwhile
        failpoints = failpoints or Failpoints({})
        delivery = Delivery(
            "at_least_once", settings.topics, clickhouse, self.monitor,
            self.stats.counters, failpoints, max_backoff_s,
        )
        t = settings.topics
        self.step = BatchStep(
            t, settings.processing, self.processor, delivery, self.stats,
            clock=clock, failpoints=failpoints, key_check=settings.kafka.key_check,
            unframer=Unframer(settings.schema_registry, {t.meter: "meter", t.scada: "scada"}),
        )
        self._stop = threading.Event()
        self._worker: Any = None
        self._topics: TopicSink | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gridstream-batch")

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the current batch and stop the worker (thread-safe; signals do the same)."""
        self._stop.set()
        worker = self._worker
        if worker is not None:  # mode has no public "stop as a signal would" call
            worker.loop.call_soon_threadsafe(worker._schedule_shutdown, signal.SIGTERM)

    def run(self, stop: threading.Event | None = None) -> RunStats:
        """Run the worker until SIGTERM/SIGINT, ``stop()`` or ``stop`` being set.

        Must run on the main thread (faust installs its signal handlers there). Raises the error
        that stopped a batch; that batch's offsets are not committed.
        """
        try:
            import faust
        except ImportError as exc:
            raise ConfigError(
                "--engine faust needs faust-streaming: pip install 'gridstream[faust]'"
            ) from exc
        if self.settings.kafka.create_topics:
            ensure_topics(self.settings)
        self.step.delivery.frames = output_frames(
            self.settings.schema_registry, self.settings.topics
        )
        self._topics = TopicSink(
            Producer(
                {
                    **self.monitor.kafka_config("producer"),
                    **self.settings.kafka.producer_config(),
                }
            )
        )
        with tempfile.TemporaryDirectory(prefix="gridstream-faust-") as datadir:
            app = faust.App(self.settings.kafka.group_id, **faust_options(self.settings, datadir))
            self._wire(app, stop)
            self._worker = faust.Worker(
                app, loglevel=self.settings.log_level, quiet=True, override_logging=False
            )
            if self._stop.is_set():
                self.stop()
            try:
                self._worker.execute_from_commandline()
            except SystemExit:
                pass
            finally:
                self._executor.shutdown(wait=True)  # no batch thread may outlive the run
                self._topics.producer.flush(10)
                if self.clickhouse is not None:  # chDB used off the main thread and left open
                    self.clickhouse.backend.close()  # crashes at interpreter exit
                self.monitor.loop_stopped(self.error)
        if self.error is not None:
            raise self.error
        return self.stats

    def _wire(self, app: Any, stop: threading.Event | None) -> None:
        t = self.settings.topics
        k = self.settings.kafka
        inputs = app.topic(
            t.meter, t.scada, key_serializer="raw", value_serializer="raw", allow_empty=True
        )
        executor = self._executor

        async def process(stream: Any) -> None:
            self.monitor.loop_started()
            loop = asyncio.get_running_loop()
            async for events in stream.take_events(k.batch_size, within=k.batch_timeout_s):
                messages = [event.message for event in events]
                for m in messages:
                    m.incref()  # held: faust may not acknowledge them until outputs are written
                try:
                    await loop.run_in_executor(executor, self._handle, messages)
                except BaseException as exc:  # noqa: BLE001 - held messages are never committed
                    self.error = exc if not isinstance(exc, asyncio.CancelledError) else None
                    if self.error is not None:
                        log.error("batch failed, stopping; its offsets stay uncommitted: %r", exc)
                        self.stop()
                        break
                    raise
                for m in messages:
                    m.decref()  # take_events' own ack now makes them committable

        app.agent(inputs, name="gridstream-process", concurrency=1)(process)

        @app.timer(1.0)
        async def heartbeat() -> None:
            self.monitor.polled(_NoLag(), 0)  # type: ignore[arg-type]
            if stop is not None and stop.is_set() and not self._stop.is_set():
                self.stop()

        @app.on_partitions_assigned.connect
        async def assigned(_app: Any, assigned: set[Any], **_kw: Any) -> None:
            self.stats.counters["rebalances"] += 1
            self.monitor.assigned([(tp.topic, tp.partition) for tp in assigned])

        @app.on_partitions_revoked.connect
        async def revoked(_app: Any, revoked: set[Any], **_kw: Any) -> None:
            self.monitor.revoked([(tp.topic, tp.partition) for tp in revoked])

    # -- one batch, on the worker thread ----------------------------------------------------
    def _handle(self, messages: list[Any]) -> None:
        batch = Consumed(
            [m.value for m in messages],
            [m.topic for m in messages],
            [m.partition for m in messages],
            [m.offset for m in messages],
            lambda i: messages[i].key,
        )
        report = self.step.run(batch, self, self._stop)
        self.monitor.batch_done(report, _NoLag())  # type: ignore[arg-type]
        if self.on_batch is not None:
            self.on_batch(report)

    # -- the batch step's engine port ---------------------------------------------------------
    def replay_until(self) -> Mapping[TaskId, int]:
        return {}  # no checkpoints under faust: nothing is replayed

    def begin(self, route: Routing) -> None:
        pass

    def publish(self, records: TopicRecords, route: Routing) -> None:
        assert self._topics is not None
        self._topics.publish(records)

    def commit(self, route: Routing) -> None:
        pass  # faust commits acknowledged offsets itself (see the module docstring)

    def state_events(self) -> dict[str, int]:
        return {}
