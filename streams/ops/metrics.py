"""Prometheus metrics of the processor: one object that owns every ``gridstream_*`` series.

The registry is injected (a fresh ``CollectorRegistry`` per processor, test or demo), so two
processors in one process never collide and nothing registers into the global default registry.
Per-reading distributions (end-to-end latency, forecast error) are observed a whole batch at a
time with ``BatchHistogram`` (numpy bucket counting), never with one Python call per reading.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
    "partition_layout_resets",
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


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric: where it lives on ``GridMetrics``, its type, name, help, labels."""

    attr: str
    kind: type
    name: str  # without the ``gridstream_`` namespace
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    preset: tuple[tuple[str, ...], ...] = ()  # label values exported at 0 before they occur


def _each(*values: str) -> tuple[tuple[str, ...], ...]:
    return tuple((v,) for v in values)


_FLAGS = _each("true", "false")

# Names follow Prometheus conventions: ``gridstream_`` prefix, base units, ``_total`` counters.
METRICS: tuple[MetricSpec, ...] = (
    # -- throughput and record fate
    MetricSpec("consumed", Counter, "readings_consumed",
               "Records consumed from an input topic (valid or dead-lettered).", ("topic",)),
    MetricSpec("produced", Counter, "records_produced",
               "Records published to an output topic and acknowledged by the broker.", ("topic",)),
    # every reason at 0 from the start, so a first flood is a rate
    MetricSpec("dead_letters", Counter, "dead_letters",
               "Consumed records sent to the dead-letter topic, by reason (error class).",
               ("reason",), preset=_each(*get_args(ErrorClass))),
    MetricSpec("dropped", Counter, "readings_dropped",
               "Readings dropped without a dead letter (exact redeliveries), by reason.",
               ("reason",), preset=_each("duplicate")),
    MetricSpec("balance", Counter, "balance_records",
               "Energy balance stage: readings forwarded, consumed, replayed, late, unmapped or "
               "undecodable; rows and events written; checkpoints and restores.", ("what",)),
    # -- Kafka consumer
    MetricSpec("lag", Gauge, "consumer_lag",
               "Records between the consumer position and the partition's high watermark.",
               ("topic", "partition")),
    MetricSpec("partition_records", Counter, "partition_records",
               "Input records of each assigned partition handled by a batch (replayed ones "
               "included).", ("topic", "partition")),
    MetricSpec("partition_waiting", Gauge, "partition_batches_waiting",
               "Batches in a row that left out this partition although it had records waiting "
               "(0 when it progresses); bounded by ceil(partitions / batch size).",
               ("topic", "partition")),
    MetricSpec("assigned", Gauge, "partitions_assigned",
               "Input partitions currently assigned to this processor."),
    MetricSpec("rebalances", Counter, "rebalances",
               "Consumer-group rebalance callbacks, by event (assign, revoke).", ("event",),
               preset=_each("assign", "revoke")),
    MetricSpec("state_events", Counter, "state_events",
               "Partition state: checkpoints written, resumes by source (checkpoint, memory, "
               "replay of the whole partition, cold), checkpoint errors, and input records "
               "replayed to rebuild state.", ("event",), preset=_each(*STATE_EVENTS)),
    # One unlabelled series, present from the start: a rule sees the very first error (a series
    # born with its first increment shows no increase); names are in kafka_errors.
    MetricSpec("consumer_errors", Counter, "consumer_errors",
               "Errors of the consumer: messages returned by poll instead of records, and offset "
               "commits left to the next batch (also counted, by error name, in kafka_errors)."),
    MetricSpec("kafka_errors", Counter, "kafka_errors",
               "Errors reported by the Kafka clients, by librdkafka error name.", ("error",)),
    # -- batches and stages
    MetricSpec("batch_records", Histogram, "batch_records", "Records per consumed batch.",
               buckets=BATCH_RECORDS_BUCKETS),
    MetricSpec("batch_duration", Histogram, "batch_duration_seconds",
               "Time from a consumed batch to its committed offsets (decode, score, write, "
               "commit).", buckets=DURATION_BUCKETS),
    MetricSpec("stage_duration", Histogram, "batch_stage_duration_seconds",
               "Time of one stage of a batch (decode, process, deliver, commit).", ("stage",),
               buckets=DURATION_BUCKETS),
    MetricSpec("model_duration", Histogram, "model_inference_duration_seconds",
               "Time a model of the core spent on one batch, by model.", ("model",),
               buckets=DURATION_BUCKETS),
    MetricSpec("last_batch", Gauge, "last_batch_timestamp_seconds",
               "Unix time at which the last batch was committed."),
    MetricSpec("end_to_end", BatchHistogram, "end_to_end_latency_seconds",
               "Time from a reading's own timestamp to the acknowledgement of its batch's "
               "outputs.", buckets=LATENCY_BUCKETS),
    # -- what the core found
    MetricSpec("anomalies", Counter, "anomalies",
               "Anomaly events published, by severity and entity kind.",
               ("severity", "entity_kind")),
    MetricSpec("detectors_fired", Counter, "anomaly_detectors_fired",
               "Detectors that fired in published anomaly events, by detector.", ("detector",)),
    MetricSpec("key_mismatch", Counter, "input_key_mismatch",
               "Valid readings whose Kafka key is not their entity id (dead-lettered as "
               "key_mismatch, or processed with GRIDSTREAM_KAFKA__KEY_CHECK=count)."),
    MetricSpec("suppressed", Counter, "anomalies_suppressed",
               "Anomalies not published because their entity was in cooldown."),
    MetricSpec("drift_events", Counter, "drift_events",
               "Model drift events detected (a reading-quality or concept-drift detector "
               "fired)."),
    MetricSpec("forecast_ape", BatchHistogram, "forecast_ape_ratio",
               "Absolute percentage error |actual - p50| / |actual| of forecasts whose target "
               "time arrived, by horizon, as a ratio (0.02 = 2 %).", ("horizon_s",),
               buckets=APE_BUCKETS),
    MetricSpec("forecasts_awaiting", Gauge, "forecasts_awaiting_actuals",
               "Forecasts held in memory until a reading arrives at their target time."),
    # -- outputs
    MetricSpec("clickhouse_duration", Histogram, "clickhouse_insert_duration_seconds",
               "Time to insert one batch's outputs into ClickHouse (successful or not).",
               buckets=DURATION_BUCKETS),
    MetricSpec("clickhouse_failures", Counter, "clickhouse_insert_failures",
               "Failed ClickHouse inserts, by whether the runtime retries them.", ("retryable",),
               preset=_FLAGS),
    MetricSpec("publish_duration", Histogram, "kafka_publish_duration_seconds",
               "Time to publish one batch's outputs and receive every acknowledgement.",
               buckets=DURATION_BUCKETS),
    MetricSpec("publish_failures", Counter, "kafka_publish_failures",
               "Failed publications of a batch's outputs to Kafka, by whether they are retried.",
               ("retryable",), preset=_FLAGS),
    # -- state of the process
    MetricSpec("health_status", Gauge, "health_status",
               "Health of the processor: 0 ok, 1 degraded, 2 critical (see GET /health)."),
    MetricSpec("model_store_failing", Gauge, "model_store_failing",
               "1 while the model store's newest promoted set is refused (unreadable, unverified "
               "or not fitting) and the previous set serves; 0 otherwise."),
    MetricSpec("models_loaded", Gauge, "models_loaded", "Models in the loaded model set."),
    MetricSpec("model_info", Gauge, "model_info",
               "One series per loaded model, with its version; the value is always 1.",
               ("model", "version")),
    MetricSpec("entities", Gauge, "entities", "Entities with state in the processor."),
    MetricSpec("build", Info, "build", "gridstream version."),
)


def make_metric(spec: MetricSpec, registry: CollectorRegistry) -> object:
    """The collector ``spec`` describes, registered in ``registry``, its preset series created."""
    if spec.kind is BatchHistogram:
        return BatchHistogram(f"{NAMESPACE}_{spec.name}", spec.doc, spec.buckets,
                              labelnames=spec.labels, registry=registry)
    extra = {"buckets": spec.buckets} if spec.buckets else {}
    metric = spec.kind(spec.name, spec.doc, spec.labels, namespace=NAMESPACE, registry=registry,
                       **extra)
    for values in spec.preset:
        metric.labels(*values)
    return metric


class GridMetrics:
    """Every metric the processor exports (``METRICS``), registered in ``registry``.

    The monitor (``streams.ops.monitor``) is the only writer.
    """

    consumed: Counter
    produced: Counter
    dead_letters: Counter
    dropped: Counter
    lag: Gauge
    partition_records: Counter
    partition_waiting: Gauge
    assigned: Gauge
    rebalances: Counter
    state_events: Counter
    kafka_errors: Counter
    batch_records: Histogram
    batch_duration: Histogram
    stage_duration: Histogram
    model_duration: Histogram
    last_batch: Gauge
    end_to_end: BatchHistogram
    anomalies: Counter
    detectors_fired: Counter
    suppressed: Counter
    key_mismatch: Counter
    drift_events: Counter
    forecast_ape: BatchHistogram
    forecasts_awaiting: Gauge
    clickhouse_duration: Histogram
    clickhouse_failures: Counter
    publish_duration: Histogram
    publish_failures: Counter
    health_status: Gauge
    models_loaded: Gauge
    model_info: Gauge
    entities: Gauge
    build: Info

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # ``*_created`` series double the series count and no rule or panel reads them. The switch
        # is process-wide in prometheus-client; gridstream is its only user in the process.
        disable_created_metrics()
        r = self.registry = registry if registry is not None else CollectorRegistry()
        for spec in METRICS:
            setattr(self, spec.attr, make_metric(spec, r))
        self.process = ProcessCollector(namespace=NAMESPACE, registry=r)

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
