"""Helpers every integration test shares: settings of one test, waiting for a condition, and a
runner on its own thread whose errors reach the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from streams.config import (
    ClickHouseSettings,
    KafkaSettings,
    ProcessingSettings,
    Settings,
    TopicSettings,
    load_settings,
)

T = TypeVar("T")


def make_settings(
    bootstrap: str,
    unique: str,
    chdb_path: Path,
    *,
    group: str = "g",
    partitions: int = 2,
    clickhouse: str = "chdb",
    tag: str = "",
    **processing: object,
) -> Settings:
    """Settings of one test: fresh topics, group and database; a fast group join on Tansu.

    ``clickhouse="none"`` switches ClickHouse output off; ``tag`` gives one test's several runs
    their own group and database over the same topics.
    """
    own = f"{tag}_{unique}" if tag else unique
    return load_settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            group_id=f"{group}-{own}",
            partitions=partitions,
            batch_size=500,
            batch_timeout_s=0.2,
            session_timeout_ms=6000,
            # the embedded broker holds a static member's join and sync 3 s each; tests that
            # need the default (static) turn it back on
            static_membership=False,
        ),
        topics=TopicSettings(
            meter=f"meter-{unique}",
            scada=f"scada-{unique}",
            forecasts=f"fc-{own}",
            anomalies=f"an-{own}",
            dead_letters=f"dl-{own}",
        ),
        clickhouse=(
            ClickHouseSettings(backend="none")
            if clickhouse == "none"
            else ClickHouseSettings(backend="chdb", path=chdb_path, database=f"t_{own}")
        ),
        processing=ProcessingSettings(**processing),
    )


def wait_until(
    what: str,
    probe: Callable[[], T],
    timeout_s: float = 90.0,
    interval_s: float = 0.2,
    check: Callable[[], object] | None = None,
) -> T:
    """Poll until ``probe`` returns something truthy and return it; ``check`` runs before every
    poll (it raises to end the wait early, e.g. on a runner's error). The deadline only bounds a
    failing test."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        if check is not None:
            check()
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        time.sleep(interval_s)


class RunnerThread:
    """``runner.run(stop)`` on a daemon thread; ``check`` and ``close`` re-raise its error.

        with RunnerThread(StreamRunner(settings)) as running:
            wait_until("all consumed", lambda: ..., check=running.check)
    """

    def __init__(
        self, runner: Any, name: str = "runner", stop: threading.Event | None = None
    ) -> None:
        self.runner = runner
        self.stop = stop or threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def check(self) -> bool:
        """True while the runner is alive or ended cleanly; raises the error it died of."""
        if self.error is not None:
            raise AssertionError(f"the runner failed: {self.error!r}") from self.error
        return True

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the runner, wait for it (the thread must end), and raise its error, if any."""
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the runner did not stop within {timeout_s} s"
        self.check()

    def __enter__(self) -> RunnerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
