"""Prometheus metrics of the processor: one object that owns every ``gridstream_*`` series.

The registry is injected (a fresh ``CollectorRegistry`` per processor, test or demo), so two
processors in one process never collide and nothing registers into the global default registry.
Per-reading distributions (end-to-end latency, forecast error) are observed a whole batch at a
time with ``BatchHistogram`` (numpy bucket counting), never with one Python call per reading.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import get_args

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from schemas.outputs import ErrorClass

NAMESPACE = "gridstream"

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_RECORDS_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 21_600, 86_400)
APE_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
SEVERITIES = ("info", "warning", "critical")


STATE_EVENTS = (
    "checkpoints",
    "checkpoint_errors",
    "resumed_from_checkpoint",
    "resumed_from_memory",
    "resumed_from_cold",
    "resumed_from_replay",
    "cold_starts",
    "dropped_in_flight",
    "replayed",
    "orphaned_temp_files_removed",
    "checkpoints_refused_format",
)


class BatchHistogram:
    """A Prometheus histogram fed with whole numpy arrays (one ``searchsorted`` per batch).

    prometheus-client's ``Histogram.observe`` takes one value per call: 5,000 calls per batch cost
    milliseconds on the hot path. This collector keeps per-bucket counts in numpy and renders the
    standard ``_bucket``/``_sum``/``_count`` series at scrape time. Non-finite values are skipped.

    >>> h = BatchHistogram("x_seconds", "doc", buckets=(1, 2), labelnames=("k",))
    >>> h.observe_many(np.array([0.5, 1.0, 1.5, 9.0]), k="a")
    >>> h.totals(k="a")
    (4, 12.0)
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        edges = np.array(sorted(float(b) for b in buckets if np.isfinite(b)), dtype=np.float64)
        if edges.size == 0:
            raise ValueError(f"histogram {name} needs at least one finite bucket")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._edges = edges
        self._le = [floatToGoString(e) for e in edges] + ["+Inf"]
        self._counts: dict[tuple[str, ...], np.ndarray] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {list(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def observe_many(self, values: np.ndarray, **labels: str) -> None:
        """Add every finite value of ``values`` to the series named by ``labels``."""
        key = self._key(labels)
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        add = np.bincount(np.searchsorted(self._edges, v, side="left"), minlength=len(self._le))
        total = float(v.sum())
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = np.zeros(len(self._le), dtype=np.int64)
                self._sums[key] = 0.0
            counts += add
            self._sums[key] += total

    def totals(self, **labels: str) -> tuple[int, float]:
        """(count, sum) of one series; (0, 0.0) if it was never observed."""
        key = self._key(labels)
        with self._lock:
            counts = self._counts.get(key)
            return (0, 0.0) if counts is None else (int(counts.sum()), self._sums[key])

    def series(self) -> dict[tuple[str, ...], tuple[int, float]]:
        """(count, sum) of every observed series, keyed by label values."""
        with self._lock:
            return {k: (int(c.sum()), self._sums[k]) for k, c in self._counts.items()}

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(k, np.cumsum(c), self._sums[k]) for k, c in self._counts.items()]
        for key, cumulative, total in series:
            buckets = [(le, float(n)) for le, n in zip(self._le, cumulative, strict=True)]
            family.add_metric(list(key), buckets, total)
        return [family]


class GridMetrics:
    """Every metric the processor exports, registered in ``registry``.

    Names follow Prometheus conventions: ``gridstream_`` prefix, base units (seconds, bytes),
    ``_total`` for counters. The monitor (``streams.ops.monitor``) is the only writer.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # ``*_created`` series double the series count and no rule or panel reads them. The switch
        # is process-wide in prometheus-client; gridstream is its only user in the process.
        disable_created_metrics()
        r = self.registry = registry if registry is not None else CollectorRegistry()
        ns = NAMESPACE
        # -- throughput and record fate
        self.consumed = Counter(
            "readings_consumed",
            "Records consumed from an input topic (valid or dead-lettered).",
            ["topic"],
            namespace=ns,
            registry=r,
        )
        self.produced = Counter(
            "records_produced",
            "Records published to an output topic and acknowledged by the broker.",
            ["topic"],
            namespace=ns,
            registry=r,
        )
        self.dead_letters = Counter(
            "dead_letters",
            "Consumed records sent to the dead-letter topic, by reason (error class).",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        for reason in get_args(ErrorClass):  # at 0 from the start, so a first flood is a rate
            self.dead_letters.labels(reason)
        self.dropped = Counter(
            "readings_dropped",
            "Readings dropped without a dead letter (exact redeliveries), by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.dropped.labels("duplicate")
        # -- Kafka consumer
        self.lag = Gauge(
            "consumer_lag",
            "Records between the consumer position and the partition's high watermark.",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.partition_records = Counter(
            "partition_records",
            "Input records of each assigned partition handled by a batch (replayed ones included).",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.partition_waiting = Gauge(
            "partition_batches_waiting",
            "Batches in a row that left out this partition although it had records waiting "
            "(0 when it progresses); bounded by ceil(partitions / batch size).",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.assigned = Gauge(
            "partitions_assigned",
            "Input partitions currently assigned to this processor.",
            namespace=ns,
            registry=r,
        )
        self.rebalances = Counter(
            "rebalances",
            "Consumer-group rebalance callbacks, by event (assign, revoke).",
            ["event"],
            namespace=ns,
            registry=r,
        )
        for event in ("assign", "revoke"):
            self.rebalances.labels(event)
        self.state_events = Counter(
            "state_events",
            "Partition state: checkpoints written, resumes by source (checkpoint, memory, replay "
            "of the whole partition, cold), "
            "checkpoint errors, and input records replayed to rebuild state.",
            ["event"],
            namespace=ns,
            registry=r,
        )
        for event in STATE_EVENTS:
            self.state_events.labels(event)
        self.kafka_errors = Counter(
            "kafka_errors",
            "Errors reported by the Kafka clients, by librdkafka error name.",
            ["error"],
            namespace=ns,
            registry=r,
        )
        # One unlabelled series, present from the start: a rule sees the very first error (a
        # series born with its first increment shows no increase); names are in kafka_errors.
        self.consumer_errors = Counter(
            "consumer_errors",
            "Errors of the consumer: messages returned by poll instead of records, and offset "
            "commits left to the next batch (also counted, by error name, in kafka_errors).",
            namespace=ns,
            registry=r,
        )
        # -- batches and stages
        self.batch_records = Histogram(
            "batch_records",
            "Records per consumed batch.",
            namespace=ns,
            registry=r,
            buckets=BATCH_RECORDS_BUCKETS,
        )
        self.batch_duration = Histogram(
            "batch_duration_seconds",
            "Time from a consumed batch to its committed offsets (decode, score, write, commit).",
            namespace=ns,
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.stage_duration = Histogram(
            "batch_stage_duration_seconds",
            "Time of one stage of a batch (decode, process, deliver, commit).",
            ["stage"],
            namespace=ns,
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.model_duration = Histogram(
            "model_inference_duration_seconds",
            "Time a model of the core spent on one batch, by model.",
            ["model"],
            namespace=ns,
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.last_batch = Gauge(
            "last_batch_timestamp_seconds",
            "Unix time at which the last batch was committed.",
            namespace=ns,
            registry=r,
        )
        self.end_to_end = BatchHistogram(
            f"{ns}_end_to_end_latency_seconds",
            "Time from a reading's own timestamp to the acknowledgement of its batch's outputs.",
            LATENCY_BUCKETS,
            registry=r,
        )
        # -- what the core found
        self.anomalies = Counter(
            "anomalies",
            "Anomaly events published, by severity and entity kind.",
            ["severity", "entity_kind"],
            namespace=ns,
            registry=r,
        )
        self.detectors_fired = Counter(
            "anomaly_detectors_fired",
            "Detectors that fired in published anomaly events, by detector.",
            ["detector"],
            namespace=ns,
            registry=r,
        )
        self.suppressed = Counter(
            "anomalies_suppressed",
            "Anomalies not published because their entity was in cooldown.",
            namespace=ns,
            registry=r,
        )
        self.drift_events = Counter(
            "drift_events",
            "Model drift events detected (a reading-quality or concept-drift detector fired).",
            namespace=ns,
            registry=r,
        )
        self.forecast_ape = BatchHistogram(
            f"{ns}_forecast_ape_ratio",
            "Absolute percentage error |actual - p50| / |actual| of forecasts whose target time "
            "arrived, by horizon, as a ratio (0.02 = 2 %).",
            APE_BUCKETS,
            labelnames=("horizon_s",),
            registry=r,
        )
        self.forecasts_awaiting = Gauge(
            "forecasts_awaiting_actuals",
            "Forecasts held in memory until a reading arrives at their target time.",
            namespace=ns,
            registry=r,
        )
        # -- outputs
        self.clickhouse_duration = Histogram(
            "clickhouse_insert_duration_seconds",
            "Time to insert one batch's outputs into ClickHouse (successful or not).",
            namespace=ns,
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.clickhouse_failures = Counter(
            "clickhouse_insert_failures",
            "Failed ClickHouse inserts, by whether the runtime retries them.",
            ["retryable"],
            namespace=ns,
            registry=r,
        )
        self.publish_duration = Histogram(
            "kafka_publish_duration_seconds",
            "Time to publish one batch's outputs and receive every acknowledgement.",
            namespace=ns,
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.publish_failures = Counter(
            "kafka_publish_failures",
            "Failed publications of a batch's outputs to Kafka, by whether they are retried.",
            ["retryable"],
            namespace=ns,
            registry=r,
        )
        for flag in ("true", "false"):
            self.clickhouse_failures.labels(flag)
            self.publish_failures.labels(flag)
        # -- state of the process
        self.health_status = Gauge(
            "health_status",
            "Health of the processor: 0 ok, 1 degraded, 2 critical (see GET /health).",
            namespace=ns,
            registry=r,
        )
        self.model_store_failing = Gauge(
            "model_store_failing",
            "1 while the model store's newest promoted set is refused (unreadable, unverified or "
            "not fitting) and the previous set serves; 0 otherwise.",
            namespace=ns,
            registry=r,
        )
        self.models_loaded = Gauge(
            "models_loaded", "Models in the loaded model set.", namespace=ns, registry=r
        )
        self.model_info = Gauge(
            "model_info",
            "One series per loaded model, with its version; the value is always 1.",
            ["model", "version"],
            namespace=ns,
            registry=r,
        )
        self.entities = Gauge(
            "entities", "Entities with state in the processor.", namespace=ns, registry=r
        )
        self.build = Info("build", "gridstream version.", namespace=ns, registry=r)
        self.process = ProcessCollector(namespace=ns, registry=r)

    def bind(
        self,
        *,
        health_level: Callable[[], float],
        entities: Callable[[], float] | None = None,
        version: str = "unknown",
    ) -> None:
        """Attach the values read at scrape time (health level, entity count) and the version."""
        self.health_status.set_function(health_level)
        if entities is not None:
            self.entities.set_function(entities)
        self.build.info({"version": version})

    def set_models(self, models: dict[str, str]) -> None:
        """Replace the loaded model set (name -> version) in ``model_info``/``models_loaded``."""
        self.model_info.clear()
        for name, ver in models.items():
            self.model_info.labels(name, ver).set(1)
        self.models_loaded.set(len(models))
