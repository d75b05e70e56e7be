"""The delivery policy of both engines: output order, retry with a pause hook, timing.

A batch has two outputs, the Kafka topics (forecasts, anomalies, dead letters) and the ClickHouse
insert. Their order depends on the guarantee, and only on it (``OUTPUT_ORDER``):

- at-least-once: Kafka first, then ClickHouse. Subscribers see a batch's events without waiting
  for the insert; both are acknowledged before any offset is committed either way.
- exactly-once: ClickHouse first, then Kafka. The Kafka transaction that publishes the records
  also commits the input offsets, so nothing may follow it.

A retryable ``SinkError`` holds the input (``Pause.hold``: the native loop pauses its partitions
and keeps polling to stay in the group; faust's bounded buffers hold back fetching on their own),
waits with exponential backoff and retries the outputs not yet written, until they are written or
the run is stopped. ``now_ms`` stays the same across retries, so ClickHouse's insert tokens drop a
retry that the server had in fact written. Every write is timed and reported to the monitor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from models.processor import ProcessResult
from schemas.batch import DeadLetterRecord, ReadingBatch
from sinks.clickhouse import ClickHouseSink
from sinks.encode import OutRecord, encode_anomalies, encode_dead_letters, encode_forecasts
from sinks.exceptions import SinkError
from streams.config import TopicSettings
from streams.ops.accuracy import Matches
from streams.ops.monitor import RunnerMonitor
from streams.runtime.failpoints import Failpoints

log = logging.getLogger("gridstream.delivery")

OUTPUT_ORDER = {"at_least_once": ("kafka", "clickhouse"), "exactly_once": ("clickhouse", "kafka")}
FIRST_BACKOFF_S = 0.5

TopicRecords = list[tuple[str, list]]  # (output topic, encoded records)


class Pause(Protocol):
    """What an engine does with its input while an output is down."""

    def hold(self) -> None:
        """Stop taking input (called once, at the first failure)."""

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Let ``seconds`` pass (or until ``stop``), staying alive in the consumer group."""

    def release(self) -> None:
        """Take input again (called once, after the outputs are written or the retry gave up)."""


class WaitOnly:
    """A pause that only waits: for engines whose buffers already hold back fetching."""

    def hold(self) -> None:
        pass

    def wait(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(seconds)

    def release(self) -> None:
        pass


@dataclass(slots=True)
class Outputs:
    """Everything one batch writes: the core's result, its dead letters, the accepted readings."""

    result: ProcessResult
    dead: list[DeadLetterRecord]
    accepted: ReadingBatch
    now_ms: int
    errors: Matches | None = None  # forecasts matched with their actuals (``forecast_errors``)

    def topic_records(
        self, topics: TopicSettings, frames: dict[str, bytes] | None = None
    ) -> TopicRecords:
        """Encoded records per topic; ``frames`` prefixes a topic's values with its registered
        schema's frame (dead letters never: they keep the original bytes)."""
        records = [
            (topics.forecasts, encode_forecasts(self.result.forecasts)),
            (topics.anomalies, encode_anomalies(self.result.anomalies)),
            (topics.dead_letters, encode_dead_letters(self.dead)),
        ]
        if not frames:
            return records
        return [
            (t, [OutRecord(r.key, frames[t] + r.value, r.headers) for r in recs])
            if t in frames else (t, recs)
            for t, recs in records
        ]

    @property
    def clickhouse_rows(self) -> int:
        return len(self.result.forecasts) + len(self.result.anomalies) + len(self.dead)


class Delivery:
    """Writes a batch's outputs in the guarantee's order, retrying while a sink is down."""

    def __init__(
        self,
        guarantee: str,
        topics: TopicSettings,
        clickhouse: ClickHouseSink | None,
        monitor: RunnerMonitor,
        counters: Counter[str],
        failpoints: Failpoints,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.order = OUTPUT_ORDER[guarantee]
        self.topics = topics
        self.clickhouse = clickhouse
        self.monitor = monitor
        self.counters = counters
        self.failpoints = failpoints
        self.max_backoff_s = max_backoff_s
        self.frames: dict[str, bytes] = {}  # output topic -> Schema Registry frame, set at start

    def deliver(
        self,
        outputs: Outputs,
        publish: Callable[[TopicRecords], None],
        pause: Pause,
        stop: threading.Event,
    ) -> None:
        """Write every output once acknowledged; raise a non-retryable error or one after stop."""
        records = outputs.topic_records(self.topics, self.frames)
        writes = {
            "kafka": (sum(len(r) for _, r in records), lambda: publish(records)),
            "clickhouse": (outputs.clickhouse_rows, lambda: self._write_clickhouse(outputs)),
        }
        steps = [(sink, *writes[sink]) for sink in self.order]
        if self.clickhouse is None:
            steps = [s for s in steps if s[0] != "clickhouse"]
        self._retry(steps, pause, stop)

    def _retry(
        self, steps: list[tuple[str, int, Callable[[], None]]], pause: Pause, stop: threading.Event
    ) -> None:
        done, backoff, held = 0, FIRST_BACKOFF_S, False
        try:
            while True:
                try:
                    while done < len(steps):
                        self.timed(*steps[done])
                        done += 1
                        if done < len(steps):
                            self.failpoints.hit("between_outputs")
                    return
                except SinkError as exc:
                    if not exc.retryable or stop.is_set():
                        raise
                    self.counters["sink_retries"] += 1
                    log.warning("output failed, retrying in %.1f s: %s", backoff, exc)
                    if not held:
                        pause.hold()
                        held = True
                    pause.wait(backoff, stop)
                    backoff = min(backoff * 2, self.max_backoff_s)
        finally:
            if held:
                pause.release()

    def timed(self, sink: str, rows: int, write: Callable[[], None]) -> None:
        """Run one output write and tell the monitor how long it took and how it ended."""
        started = time.perf_counter()
        try:
            write()
        except SinkError as exc:
            self.monitor.output(sink, rows, time.perf_counter() - started, exc)
            raise
        self.monitor.output(sink, rows, time.perf_counter() - started, None)

    def _write_clickhouse(self, outputs: Outputs) -> None:
        assert self.clickhouse is not None
        result = outputs.result
        self.clickhouse.write(
            result.forecasts, result.anomalies, outputs.dead, outputs.now_ms,
            readings=outputs.accepted, errors=outputs.errors,
        )
        if result.drift_events:
            self.clickhouse.write_drift_events(result.drift_events)
