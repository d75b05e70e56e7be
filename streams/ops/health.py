"""Health of a running processor: what its dependencies and its loop last reported, as a verdict.

The processing loop reports events (``loop_started``, ``kafka_connected``, ``output_failed``,
``batch_done``...) from its own thread; ``evaluate`` is called from the HTTP thread. Nothing here
performs I/O: a health check never waits on Kafka or ClickHouse, it reads their last state.

Verdicts (``GET /health``: 200 for ok and degraded, 503 for critical):

critical - the processor does not do its job and a restart or an operator is needed:
  * the processing loop has not started yet, or has stopped (the error is reported);
  * Kafka is unreachable (no broker connection up, "all brokers down"), or a client reported a
    fatal or authentication/authorisation error;
  * the loop has not polled Kafka for ``loop_timeout_s`` (stuck; the group will evict it).
degraded - it runs, but outputs are late or at risk; it recovers by itself when the cause goes:
  * ClickHouse inserts fail and are being retried (input paused, nothing committed);
  * publishing outputs to Kafka fails and is being retried;
  * input is pending (consumer lag > 0) but no batch completed for ``stall_after_s``.
ok - none of the above.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    OK = 0
    DEGRADED = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One verdict; ``to_dict`` is the body of ``GET /health``."""

    status: Status
    reasons: list[str]
    uptime_s: float
    models_loaded: int
    kafka: str
    clickhouse: str
    timestamp: datetime
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return 503 if self.status is Status.CRITICAL else 200

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.label,
            "uptime": round(self.uptime_s, 3),
            "models_loaded": self.models_loaded,
            "kafka": self.kafka,
            "clickhouse": self.clickhouse,
            "timestamp": self.timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "reasons": self.reasons,
            **self.details,
        }


class Health:
    """Thread-safe record of the processor's state, and the rules that turn it into a verdict.

    ``clock`` is monotonic seconds (ages and uptime), ``wall`` is epoch seconds (the timestamp);
    both are injectable so the rules can be tested without waiting.
    """

    def __init__(
        self,
        *,
        models_loaded: Callable[[], int] | int = 0,
        clickhouse_enabled: bool = True,
        stall_after_s: float = 120.0,
        loop_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._models = models_loaded if callable(models_loaded) else (lambda: models_loaded)
        self.stall_after_s = stall_after_s
        self.loop_timeout_s = loop_timeout_s
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._started = clock()
        self._loop = "starting"
        self._loop_error: str | None = None
        self._heartbeat = self._started
        self._progress = self._started  # last batch, assignment or loop start
        self._batches = 0
        self._last_batch = self._started
        self._kafka = "connecting"
        self._kafka_detail: str | None = None
        self._kafka_fatal = False
        self._clickhouse = "unknown" if clickhouse_enabled else "disabled"
        self._failing: dict[str, str] = {}  # sink -> last error, while it is being retried
        self._inputs_failing: dict[str, str] = {}  # e.g. the Schema Registry, while input waits
        self._model_error: str | None = None
        self._pending = False
        self._lag: int | None = None
        self._assigned = 0

    @property
    def kafka(self) -> str:
        """Kafka connectivity: connecting, connected, disconnected or failed."""
        with self._lock:
            return self._kafka

    # -- events from the processing loop ------------------------------------------------------
    def loop_started(self) -> None:
        with self._lock:
            self._loop, self._loop_error = "running", None
            self._heartbeat = self._progress = self._clock()

    def loop_stopped(self, error: str | None = None) -> None:
        with self._lock:
            self._loop, self._loop_error = "stopped", error

    def heartbeat(self) -> None:
        with self._lock:
            self._heartbeat = self._clock()

    def kafka_connected(self) -> None:
        with self._lock:
            if not self._kafka_fatal:
                self._kafka, self._kafka_detail = "connected", None

    def kafka_disconnected(self, detail: str) -> None:
        with self._lock:
            if not self._kafka_fatal:
                self._kafka, self._kafka_detail = "disconnected", detail

    def kafka_failed(self, detail: str, *, fatal: bool = False) -> None:
        """An error that retrying will not fix (fatal client error, authentication)."""
        with self._lock:
            self._kafka, self._kafka_detail = "failed", detail
            self._kafka_fatal = self._kafka_fatal or fatal

    def models_status(self, error: str | None) -> None:
        """A model set that failed verification or loading: degraded, the previous one serves."""
        with self._lock:
            self._model_error = error

    def clickhouse_connected(self) -> None:
        with self._lock:
            if self._clickhouse != "disabled":
                self._clickhouse = "connected"

    def output_ok(self, sink: str) -> None:
        with self._lock:
            self._failing.pop(sink, None)
            if sink == "clickhouse" and self._clickhouse != "disabled":
                self._clickhouse = "connected"

    def output_failed(self, sink: str, detail: str) -> None:
        with self._lock:
            self._failing[sink] = detail
            if sink == "clickhouse" and self._clickhouse != "disabled":
                self._clickhouse = "failing"

    def input_status(self, source: str, error: str | None) -> None:
        """A service the input depends on (the Schema Registry) failing, or well again."""
        with self._lock:
            if error is None:
                self._inputs_failing.pop(source, None)
            else:
                self._inputs_failing[source] = error

    def assigned(self, partitions: int) -> None:
        with self._lock:
            self._assigned = partitions
            self._progress = self._clock()

    def input_lag(self, total: int | None) -> None:
        """Total consumer lag of the assigned partitions (None: unknown)."""
        with self._lock:
            if total is not None and total > 0 and not self._pending:
                self._progress = max(self._progress, self._clock())  # the stall clock starts now
            self._lag = total
            self._pending = bool(total)

    def batch_done(self) -> None:
        with self._lock:
            self._batches += 1
            self._heartbeat = self._progress = self._last_batch = self._clock()

    # -- verdict ------------------------------------------------------------------------------
    def evaluate(self) -> HealthReport:
        now = self._clock()
        with self._lock:
            critical: list[str] = []
            degraded: list[str] = []
            if self._loop == "starting":
                critical.append("processing loop not started yet")
            elif self._loop == "stopped":
                critical.append(
                    "processing loop stopped"
                    + (f": {self._loop_error}" if self._loop_error else "")
                )
            elif now - self._heartbeat > self.loop_timeout_s:
                critical.append(f"processing loop unresponsive for {now - self._heartbeat:.0f} s")
            if self._kafka != "connected":
                detail = f": {self._kafka_detail}" if self._kafka_detail else ""
                critical.append(f"kafka {self._kafka}{detail}")
            if self._model_error:
                degraded.append(f"model store: {self._model_error}; the previous set serves")
            for sink, error in sorted(self._failing.items()):
                degraded.append(f"{sink} output failing, retrying: {error}")
            for source, error in sorted(self._inputs_failing.items()):
                degraded.append(f"{source} failing, input held and retried: {error}")
            idle = now - self._progress
            if self._loop == "running" and self._pending and idle > self.stall_after_s:
                degraded.append(
                    f"no batch completed for {idle:.0f} s while {self._lag} records are pending"
                )
            status = Status.CRITICAL if critical else Status.DEGRADED if degraded else Status.OK
            details = {
                "loop": self._loop,
                "batches": self._batches,
                "assigned_partitions": self._assigned,
                "consumer_lag": self._lag,
                "last_batch_age_s": round(now - self._last_batch, 3) if self._batches else None,
            }
            kafka, clickhouse = self._kafka, self._clickhouse
        return HealthReport(
            status=status,
            reasons=critical + degraded,
            uptime_s=now - self._started,
            models_loaded=int(self._models()),
            kafka=kafka,
            clickhouse=clickhouse,
            timestamp=datetime.fromtimestamp(self._wall(), tz=UTC),
            details=details,
        )

    def level(self) -> float:
        """The status as a number for the ``gridstream_health_status`` gauge."""
        return float(self.evaluate().status)
