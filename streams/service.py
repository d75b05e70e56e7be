"""The one place that assembles the service: settings in, the engine that runs them out.

``gridstream run``, ``demo`` and ``bench`` build their engine here, and ``backtest`` builds its
partition tasks here, so all four run the same thing: one core per input partition
(``streams.state.tasks.TaskSet``), with the configured parameters and model set, the monitor that
feeds /metrics and /health, the configured ClickHouse sink, and one engine (native or faust)
around the one batch step. What comes from the process environment (failpoints, the worker's
transactional id) is resolved by the CLI and passed in; nothing here reads the environment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from models.ensemble import NowcastEnsemble
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ClickHouseBackend
from streams.config import Settings
from streams.ops.monitor import Monitor
from streams.ops.report import BatchReport
from streams.runtime.batch import RunStats
from streams.runtime.failpoints import Failpoints
from streams.runtime.runner import StreamRunner
from streams.runtime.wiring import clickhouse_sink
from streams.state.tasks import TaskSet

EngineName = Literal["native", "faust"]


class Engine(Protocol):
    """What ``gridstream run`` needs of an engine: run until stopped, then the totals."""

    stats: RunStats

    def run(self, stop: threading.Event | None = None) -> RunStats: ...


def build_tasks(settings: Settings, ensemble: NowcastEnsemble | None = None) -> TaskSet:
    """The partition tasks of a run or a backtest: the processing settings, one model set."""
    return TaskSet(settings.processing.params(), ensemble)


@dataclass(slots=True)
class Service:
    """An assembled service: its tasks, monitor, ClickHouse sink and engine, ready to ``run``."""

    settings: Settings
    tasks: TaskSet
    monitor: Monitor
    sink: ClickHouseSink | None
    engine: Engine  # a StreamRunner, or a FaustEngine under ``--engine faust``

    def ensure_schema(self, migrate: bool = True) -> None:
        """Apply the ClickHouse schema (or, without ``migrate``, only check it: an INSERT-only
        user suffices) and tell /health it is reachable."""
        if self.sink is not None:
            if migrate:
                self.sink.ensure_schema()
            else:
                self.sink.verify_schema()
            self.monitor.health.clickhouse_connected()


@dataclass(frozen=True, slots=True)
class Assembly:
    """How ``build_service`` wires the pieces; the defaults are those of ``gridstream run``."""

    engine: EngineName = "native"
    backend: ClickHouseBackend | None = None  # None: the configured one (or none)
    on_batch: Callable[[BatchReport], None] | None = None
    failpoints: Failpoints | None = None
    transactional_id: str | None = None
    clock: Callable[[], float] = time.time
    max_backoff_s: float = 30.0


def build_service(settings: Settings, how: Assembly | None = None) -> Service:
    """Assemble the service from settings; the ClickHouse schema is not applied yet."""
    how = how or Assembly()
    tasks = build_tasks(settings)
    monitor = Monitor(tasks, clickhouse_enabled=settings.clickhouse.backend != "none")
    sink = clickhouse_sink(settings, how.backend)
    engine: Engine
    if how.engine == "faust":
        from streams.runtime.faust_engine import FaustEngine

        engine = FaustEngine(
            settings, tasks, sink, clock=how.clock, on_batch=how.on_batch,
            max_backoff_s=how.max_backoff_s, monitor=monitor, failpoints=how.failpoints,
        )
    else:
        engine = StreamRunner(
            settings, tasks, sink, clock=how.clock, on_batch=how.on_batch,
            max_backoff_s=how.max_backoff_s, monitor=monitor, failpoints=how.failpoints,
            transactional_id=how.transactional_id,
        )
    return Service(settings, tasks, monitor, sink, engine)
