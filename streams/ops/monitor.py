"""The runner's observer: turns loop events into Prometheus metrics and the health verdict.

``StreamRunner`` calls a ``RunnerMonitor`` at a handful of points (clients created, assignment,
every poll, every output attempt, every committed batch, loop end) and knows nothing of
Prometheus. ``Monitor`` is the real one; ``NullMonitor`` (the default) does nothing.

Everything here runs on the processing thread (librdkafka serves ``error_cb``/``stats_cb`` inside
``poll``/``consume``), except ``models`` and the health verdict, which the HTTP thread reads.

Consumer lag per partition is the cached high watermark of the last fetch response minus the
consumer position (``get_watermark_offsets(cached=True)`` and ``position``, no network round
trip), refreshed after every batch and at most every ``lag_interval_s`` while idle. Paused
partitions (an output being retried) are not fetched, so their lag holds its last value.
The embedded test broker (Tansu) answers watermarks with a batch count rather than an offset, so
lag is not meaningful there; against Apache Kafka it is exact (in ``read_committed`` mode it
counts records of open transactions too, since the high watermark is not the stable offset).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from sinks.exceptions import SinkError
from streams.ops.accuracy import ForecastAccuracy
from streams.ops.health import Health
from streams.ops.metrics import STATE_EVENTS, GridMetrics

if TYPE_CHECKING:
    from models.processor import GridProcessor
    from streams.ops.report import BatchReport

log = logging.getLogger("gridstream.monitor")

# Errors that retrying will not fix: the configuration (credentials, ACLs, TLS) must change.
_AUTH_ERRORS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


class RunnerMonitor(Protocol):
    """What the runner reports; every method is called on the processing thread."""

    def kafka_config(self, role: str) -> dict[str, Any]: ...
    def loop_started(self) -> None: ...
    def loop_stopped(self, error: BaseException | None) -> None: ...
    def assigned(self, parts: list[tuple[str, int]]) -> None: ...
    def revoked(self, parts: list[tuple[str, int]]) -> None: ...
    def polled(self, consumer: Consumer, messages: int) -> None: ...
    def consumer_error(self, err: KafkaError) -> None: ...
    def output(self, sink: str, rows: int, duration_s: float, error: SinkError | None) -> None: ...
    def batch_done(self, report: BatchReport, consumer: Consumer) -> None: ...
    def models_status(self, error: str | None) -> None: ...
    def input_status(self, source: str, error: str | None) -> None: ...


class NullMonitor:
    """Observes nothing: the runner's default when nobody watches (tests, backtests)."""

    def kafka_config(self, role: str) -> dict[str, Any]:
        return {}

    def loop_started(self) -> None:
        pass

    def loop_stopped(self, error: BaseException | None) -> None:
        pass

    def assigned(self, parts: list[tuple[str, int]]) -> None:
        pass

    def revoked(self, parts: list[tuple[str, int]]) -> None:
        pass

    def polled(self, consumer: Consumer, messages: int) -> None:
        pass

    def consumer_error(self, err: KafkaError) -> None:
        pass

    def output(self, sink: str, rows: int, duration_s: float, error: SinkError | None) -> None:
        pass

    def batch_done(self, report: BatchReport, consumer: Consumer) -> None:
        pass

    def models_status(self, error: str | None) -> None:
        pass

    def input_status(self, source: str, error: str | None) -> None:
        pass


def _version() -> str:
    try:
        return version("gridstream")
    except PackageNotFoundError:
        return "unknown"


class Monitor:
    """Metrics + health + forecast accuracy for one processor, with its own registry.

    ``processor`` is read for the model set (``model_versions``, ``params.describe()``, or a
    ``describe_models()`` method if it has one) and the entity count.
    """

    def __init__(
        self,
        processor: GridProcessor | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clickhouse_enabled: bool = True,
        stats_interval_ms: int = 2000,
        lag_interval_s: float = 1.0,
        stall_after_s: float = 120.0,
        loop_timeout_s: float = 300.0,
        accuracy: ForecastAccuracy | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.processor = processor
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GridMetrics(self.registry)
        self.health = Health(
            models_loaded=lambda: len(self._model_versions()),
            clickhouse_enabled=clickhouse_enabled,
            stall_after_s=stall_after_s,
            loop_timeout_s=loop_timeout_s,
            clock=monotonic,
            wall=clock,
        )
        self.accuracy = accuracy or ForecastAccuracy()
        self.stats_interval_ms = stats_interval_ms
        self.lag_interval_s = lag_interval_s
        self._monotonic = monotonic
        self._last_lag = float("-inf")
        self._lag_series: set[tuple[str, int]] = set()
        self._assignment: set[tuple[str, int]] = set()
        self._state_seen: dict[str, int] = {}
        self._waiting: dict[tuple[str, int], int] = {}  # batches a partition was left out
        self._kafka_logger = logging.getLogger("gridstream.kafka")
        self.metrics.bind(
            health_level=self.health.level,
            entities=(lambda: float(processor.entities)) if processor is not None else None,
            version=_version(),
        )
        self._models_seen = self._model_versions()
        self.metrics.set_models(self._models_seen)

    # -- the model set, for /models and health ------------------------------------------------
    def _model_versions(self) -> dict[str, str]:
        return dict(getattr(self.processor, "model_versions", {}) or {})

    def models(self) -> dict[str, Any]:
        """Body of ``GET /models``: whatever the processor reports, plus live forecast error."""
        p = self.processor
        body: dict[str, Any] = {}
        describe = getattr(p, "describe_models", None)
        if callable(describe):
            body.update(describe())
        else:
            versions = self._model_versions()
            body["models"] = [{"name": k, "version": v} for k, v in versions.items()]
            params = getattr(p, "params", None)
            if params is not None and hasattr(params, "describe"):
                body["params"] = params.describe()
        if p is not None:
            body["entities"] = int(getattr(p, "entities", 0))
        body["forecast_mape"] = self._mape()
        return body

    def _mape(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (count, total) in self.metrics.forecast_ape.series().items():
            out[key[0]] = {"mape": total / count if count else None, "forecasts_evaluated": count}
        return out

    # -- librdkafka callbacks -----------------------------------------------------------------
    def kafka_config(self, role: str) -> dict[str, Any]:
        """Callbacks and statistics for a client; explicit settings override these defaults."""
        conf: dict[str, Any] = {"error_cb": self._on_error, "logger": self._kafka_logger}
        if role == "consumer":
            conf["stats_cb"] = self._on_stats
            conf["statistics.interval.ms"] = self.stats_interval_ms
        return conf

    def _on_error(self, err: KafkaError) -> None:
        self.metrics.kafka_errors.labels(err.name()).inc()
        code = err.code()
        if err.fatal() or code in _AUTH_ERRORS:
            if self.health.kafka != "failed":
                log.error("kafka client error: %s", err.str())
            self.health.kafka_failed(f"{err.name()}: {err.str()}", fatal=err.fatal())
        elif code == KafkaError._ALL_BROKERS_DOWN:
            if self.health.kafka == "connected":
                log.warning("kafka unreachable: %s", err.str())
            self.health.kafka_disconnected(err.str())

    def _on_stats(self, raw: str) -> None:
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        brokers = list(stats.get("brokers", {}).values())
        up = [b.get("nodeid", -1) for b in brokers if b.get("state") == "UP"]
        if any(node >= 0 for node in up):  # a real broker, not only bootstrap or coordinator
            if self.health.kafka == "disconnected":
                log.info("kafka reachable again")
            self.health.kafka_connected()
        elif not up and self.health.kafka != "connecting":
            self.health.kafka_disconnected("no broker connection is up")

    # -- runner hooks -------------------------------------------------------------------------
    def loop_started(self) -> None:
        self.health.loop_started()

    def loop_stopped(self, error: BaseException | None) -> None:
        detail = None if error is None else f"{type(error).__name__}: {error}"
        self.health.loop_stopped(detail)

    def assigned(self, parts: list[tuple[str, int]]) -> None:
        self.metrics.rebalances.labels("assign").inc()
        self._assignment.update(parts)
        self.metrics.assigned.set(len(self._assignment))
        self.health.assigned(len(self._assignment))
        self.health.kafka_connected()  # a group join is a broker answering

    def revoked(self, parts: list[tuple[str, int]]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        self._assignment.difference_update(parts)
        for topic, partition in parts:
            if (topic, partition) in self._lag_series:
                self._lag_series.discard((topic, partition))
                self.metrics.lag.remove(topic, str(partition))
            if self._waiting.pop((topic, partition), None) is not None:
                self.metrics.partition_waiting.remove(topic, str(partition))
        self.metrics.assigned.set(len(self._assignment))
        self.health.assigned(len(self._assignment))

    def polled(self, consumer: Consumer, messages: int) -> None:
        self.health.heartbeat()
        if self._monotonic() - self._last_lag >= self.lag_interval_s:
            self._refresh_lag(consumer)

    def consumer_error(self, err: KafkaError) -> None:
        self.metrics.kafka_errors.labels(err.name()).inc()
        self.metrics.consumer_errors.inc()
        if err.code() in _AUTH_ERRORS:
            self.health.kafka_failed(f"{err.name()}: {err.str()}")

    def output(self, sink: str, rows: int, duration_s: float, error: SinkError | None) -> None:
        m = self.metrics
        if sink == "clickhouse":
            histogram, failures = m.clickhouse_duration, m.clickhouse_failures
        else:
            histogram, failures = m.publish_duration, m.publish_failures
        if error is not None:
            histogram.observe(duration_s)
            failures.labels("true" if error.retryable else "false").inc()
            self.health.output_failed(sink, str(error)[:300])
        elif rows:
            histogram.observe(duration_s)
            self.health.output_ok(sink)

    def models_status(self, error: str | None) -> None:
        self.metrics.model_store_failing.set(0 if error is None else 1)
        self.health.models_status(error)

    def input_status(self, source: str, error: str | None) -> None:
        self.health.input_status(source, error)

    def _count_state(self, totals: dict[str, int]) -> None:
        """State events arrive as running totals; the counters advance by the difference."""
        for event, total in totals.items():
            seen = self._state_seen.get(event, 0)
            if total > seen and event in STATE_EVENTS:
                self.metrics.state_events.labels(event).inc(total - seen)
            self._state_seen[event] = total

    def batch_done(self, report: BatchReport, consumer: Consumer) -> None:
        try:
            models = self._model_versions()
            if models != self._models_seen:  # a model set was hot-reloaded between batches
                self._models_seen = models
                self.metrics.set_models(models)
            self._count(report)
            self._count_state(report.state_events)
            self._count_partitions(report)
        except Exception:  # metrics must never stop the pipeline; the error is logged
            log.exception("updating metrics after a batch failed")
        self.health.batch_done()
        self.health.kafka_connected()  # the batch was published and committed
        self._refresh_lag(consumer)

    # -- per-batch bookkeeping ----------------------------------------------------------------
    def _count(self, report: BatchReport) -> None:
        m = self.metrics
        for topic, n in report.consumed_by_topic.items():
            m.consumed.labels(topic).inc(n)
        for topic, n in report.produced.items():
            if n:
                m.produced.labels(topic).inc(n)
        for reason, n in report.dead_letter_reasons.items():
            m.dead_letters.labels(reason).inc(n)
        c = report.counters
        if c.get("dropped_duplicate"):
            m.dropped.labels("duplicate").inc(c["dropped_duplicate"])
        if c.get("key_mismatch"):
            m.key_mismatch.inc(c["key_mismatch"])
        if c.get("suppressed_cooldown"):
            m.suppressed.inc(c["suppressed_cooldown"])
        if c.get("drift_events"):
            m.drift_events.inc(c["drift_events"])
        m.batch_records.observe(report.consumed)
        m.batch_duration.observe(report.duration_s)
        for stage, seconds in report.stage_s.items():
            m.stage_duration.labels(stage).observe(seconds)
        result = report.result
        for model, seconds in (getattr(result, "timings", None) or {}).items():
            m.model_duration.labels(model).observe(seconds)
        for event in result.anomalies:
            m.anomalies.labels(event.severity, event.entity_kind).inc()
            for detector in event.fired:
                m.detectors_fired.labels(detector).inc()
        batch = report.readings_batch
        if len(batch):
            latency = (report.published_ms - batch.ts_ms) / 1000.0
            m.end_to_end.observe_many(np.maximum(latency, 0.0))
            apes, awaiting = report.forecast_apes, report.forecasts_awaiting
            if apes is None:  # one core without partition tasks (faust): measured here
                apes = self.accuracy.track(batch, result).apes_by_horizon()
                awaiting = self.accuracy.pending
            for horizon, ape in apes.items():
                m.forecast_ape.observe_many(ape, horizon_s=str(horizon))
            m.forecasts_awaiting.set(awaiting)
        m.last_batch.set(report.published_ms / 1000.0)

    def _count_partitions(self, report: BatchReport) -> None:
        """Per-partition progress: records handled, batches left out while records waited."""
        m = self.metrics
        for (topic, partition), n in report.partitions.items():
            m.partition_records.labels(topic, str(partition)).inc(n)
        for tp in self._assignment:
            if report.partitions.get(tp) or not report.buffered.get(tp):
                waiting = 0
            else:
                waiting = self._waiting.get(tp, 0) + 1
            self._waiting[tp] = waiting
            m.partition_waiting.labels(tp[0], str(tp[1])).set(waiting)

    def _refresh_lag(self, consumer: Consumer) -> None:
        self._last_lag = self._monotonic()
        try:
            positions = consumer.position(consumer.assignment())
        except KafkaException:
            return
        total, known = 0, False
        for tp in positions:
            lag = _lag(consumer, tp)
            if lag is None:
                continue
            known = True
            total += lag
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
            self._lag_series.add((tp.topic, tp.partition))
        self.health.input_lag(total if known else None)


def _lag(consumer: Consumer, tp: TopicPartition) -> int | None:
    """High watermark minus position, from cached fetch metadata; None while unknown."""
    if tp.offset < 0:
        return None  # nothing fetched or consumed yet on this partition
    try:
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
    except KafkaException:
        return None
    if high < 0:
        return None
    return max(0, high - tp.offset)
