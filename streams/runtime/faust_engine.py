"""``gridstream run --engine faust``: the same core inside a faust-streaming worker.

For teams that already operate Faust workers. Faust (aiokafka) consumes both input topics in the
consumer group ``GRIDSTREAM_KAFKA__GROUP_ID`` with its own assignor; one agent batches events with
``stream.take_events(batch_size, within=batch_timeout_s)`` (``take`` plus the events, whose
topic/partition/offset dead letters need) and hands each batch to one worker thread, which runs
exactly what the native runtime runs: ``decode_batch`` -> ``GridProcessor.process_batch`` ->
ClickHouse (the same sink) -> forecasts, anomalies and dead letters through the same encoders and
``TopicSink`` (a confluent-kafka producer: same keys, headers, acks and retries). No faust Tables:
window state stays in the core. The thread keeps faust's event loop free, so heartbeats go on
while a batch is written or retried; faust's bounded buffers then hold back further fetching.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Producer

from models.processor import GridProcessor, ProcessResult
from schemas.batch import DeadLetterRecord
from schemas.decode import METER, SCADA, decode_batch
from sinks.clickhouse import ClickHouseSink
from sinks.encode import encode_anomalies, encode_dead_letters, encode_forecasts
from sinks.exceptions import SinkError
from sinks.topics import TopicSink
from streams.config import ConfigError, Settings
from streams.ops.monitor import NullMonitor, RunnerMonitor
from streams.ops.report import BatchReport
from streams.runtime.runner import (
    RunStats,
    StreamRunner,
    _accepted,
    ensure_topics,
    record_batch,
)

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
    """Runs a ``GridProcessor`` in a faust worker; the worker is built and started by ``run``.

    The caller applies the ClickHouse schema (``ClickHouseSink.ensure_schema``) before ``run``.
    """

    def __init__(
        self,
        settings: Settings,
        processor: GridProcessor | None = None,
        clickhouse: ClickHouseSink | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[BatchReport], None] | None = None,
        max_backoff_s: float = 30.0,
        monitor: RunnerMonitor | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor or GridProcessor(settings.processing.params())
        self.clickhouse = clickhouse
        self.clock = clock
        self.on_batch = on_batch
        self.max_backoff_s = max_backoff_s
        self.monitor: RunnerMonitor = monitor or NullMonitor()
        self.stats = RunStats()
        self.error: BaseException | None = None
        t = settings.topics
        self._contract = {t.meter: METER, t.scada: SCADA}
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
        runner = StreamRunner(self.settings, self.processor, monitor=self.monitor)
        self._topics = TopicSink(Producer(runner.producer_config()))
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
        started = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        p = self.settings.processing
        decoded = decode_batch(
            [m.value for m in messages],
            [self._contract[m.topic] for m in messages],
            now_ms=now_ms,
            max_age_ms=p.max_age_s * 1000,
            max_future_ms=p.max_future_s * 1000,
        )
        t_process = time.perf_counter()
        readings = decoded.readings
        result = self.processor.process_batch(readings, now_ms)
        t_deliver = time.perf_counter()
        rejections = decoded.rejections + result.rejections
        dead = [_dead_letter(messages[r.src_index], r, now_ms) for r in rejections]
        self._deliver(result, dead, now_ms, _accepted(readings, result))
        published_ms = int(self.clock() * 1000)
        t_end = time.perf_counter()
        report = record_batch(
            self.stats,
            self.settings.topics,
            consumed=len(messages),
            topics_of_records=[m.topic for m in messages],
            readings=readings,
            result=result,
            dead=len(dead),
            rejections=rejections,
            duration_s=t_end - started,
            stage_s={
                "decode": t_process - started,
                "process": t_deliver - t_process,
                "deliver": t_end - t_deliver,  # faust commits later, on its own interval
            },
            published_ms=published_ms,
        )
        self.monitor.batch_done(report, _NoLag())  # type: ignore[arg-type]
        if self.on_batch is not None:
            self.on_batch(report)

    def _deliver(
        self, result: ProcessResult, dead: list[DeadLetterRecord], now_ms: int, accepted: Any
    ) -> None:
        """ClickHouse, then the topics; retry a retryable failure with backoff until stopped."""
        assert self._topics is not None
        topics = self._topics
        t = self.settings.topics
        outputs = [
            (t.forecasts, encode_forecasts(result.forecasts)),
            (t.anomalies, encode_anomalies(result.anomalies)),
            (t.dead_letters, encode_dead_letters(dead)),
        ]
        written_ch = self.clickhouse is None
        backoff = 0.5
        while True:
            try:
                if not written_ch:
                    rows = len(result.forecasts) + len(result.anomalies) + len(dead)
                    self._timed(
                        "clickhouse",
                        rows,
                        lambda: self._write_clickhouse(result, dead, now_ms, accepted),
                    )
                    written_ch = True
                rows = sum(len(records) for _, records in outputs)
                self._timed("kafka", rows, lambda: topics.publish(outputs))
                return
            except SinkError as exc:
                if not exc.retryable or self._stop.is_set():
                    raise
                self.stats.counters["sink_retries"] += 1
                log.warning("output failed, retrying in %.1f s: %s", backoff, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _write_clickhouse(
        self, result: ProcessResult, dead: list[DeadLetterRecord], now_ms: int, accepted: Any
    ) -> None:
        assert self.clickhouse is not None
        self.clickhouse.write(result.forecasts, result.anomalies, dead, now_ms, readings=accepted)
        if result.drift_events:
            self.clickhouse.write_drift_events(result.drift_events)

    def _timed(self, sink: str, rows: int, write: Callable[[], None]) -> None:
        started = time.perf_counter()
        try:
            write()
        except SinkError as exc:
            self.monitor.output(sink, rows, time.perf_counter() - started, exc)
            raise
        self.monitor.output(sink, rows, time.perf_counter() - started, None)


def _dead_letter(msg: Any, rejection: Any, now_ms: int) -> DeadLetterRecord:
    return DeadLetterRecord(
        source_topic=msg.topic,
        source_partition=msg.partition,
        source_offset=msg.offset,
        key=msg.key,
        raw=msg.value or b"",
        error_class=rejection.error_class,
        error=rejection.error,
        dead_lettered_ms=now_ms,
    )
