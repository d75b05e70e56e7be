"""The shipped alert rules on a real Prometheus and Alertmanager, scraping ``gridstream run``.

One processor runs as its own process on an embedded broker of this test (so it can be stopped)
and writes to ClickHouse through the test endpoint (so it can refuse). A feeder produces a steady
stream of smooth meter readings. After a healthy stretch with nothing pending or firing, faults
come one at a time, and each one's alert must reach the test's webhook through Alertmanager:
a dead-letter flood, a refused model set, ClickHouse refusing connections, the broker stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Producer

from sinks.clickhouse_backend import ChdbBackend
from streams.tools.broker import EmbeddedBroker, free_port
from tests.chserver import PASSWORD, USER, ChServer
from tests.integration.alerting import (
    RULES,
    Webhook,
    prometheus_binaries,
    prometheus_stack,
    shortened_rules,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        prometheus_binaries() is None,
        reason="needs Debian's prometheus and prometheus-alertmanager (see .ci/run)",
    ),
]

METERS = 20
STEP_MS = 900_000


class Feeder:
    """One reading per meter every ``period_s``, 15 minutes of data apart, until the present.

    Daily load shapes with a little noise, like a quiet fleet: nothing for a detector to find.
    """

    def __init__(self, bootstrap: str, topic: str, start_ms: int, period_s: float = 0.1) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic, self.ts_ms, self.period_s = topic, start_ms, period_s
        self.steps = 0
        self._rng = random.Random(7)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.ts_ms < time.time() * 1000:
            hour = (self.ts_ms // 3_600_000) % 24
            for i in range(METERS):
                level = 2.0 + 0.1 * i + math.sin(2 * math.pi * hour / 24)
                kw = level * (1 + self._rng.gauss(0, 0.05))
                value = orjson.dumps({"meter_id": f"m{i}", "ts": self.ts_ms, "kw": round(kw, 3)})
                self.producer.produce(self.topic, value, f"m{i}".encode())
            self.producer.poll(0)
            self.ts_ms += STEP_MS
            self.steps += 1
            self._stop.wait(self.period_s)

    def flood(self, n: int) -> None:
        for i in range(n):
            self.producer.produce(self.topic, b"{not json", f"m{i % METERS}".encode())
        self.producer.flush(10)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.flush(1)


def _wait(what: str, check: Callable[[], bool], timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gridstream run exited with {proc.returncode} before {what}")
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test alone: stopping it must not disturb the others."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as running:
        yield running


@pytest.fixture
def clickhouse(chdb_path: Path) -> Iterator[ChServer]:
    backend = ChdbBackend(chdb_path)
    with ChServer(backend, username=USER, password=PASSWORD) as server:
        yield server
    backend.close()


def test_the_test_rules_differ_from_the_shipped_ones_only_in_for() -> None:
    shipped = yaml.safe_load(RULES.read_text())
    test = shortened_rules()
    for g1, g2 in zip(shipped["groups"], test["groups"], strict=True):
        for r1, r2 in zip(g1["rules"], g2["rules"], strict=True):
            assert {k: v for k, v in r1.items() if k != "for"} == {
                k: v for k, v in r2.items() if k != "for"
            }


def test_each_fault_reaches_the_webhook_and_a_healthy_run_fires_nothing(
    broker: EmbeddedBroker, clickhouse: ChServer, unique: str, tmp_path: Path
) -> None:
    http_port = free_port()
    meter_topic = f"meter-{unique}"
    store = tmp_path / "models"
    store.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env.update(
        GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
        GRIDSTREAM_KAFKA__GROUP_ID=f"g-{unique}",
        GRIDSTREAM_KAFKA__PARTITIONS="2",
        GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS="6000",
        GRIDSTREAM_TOPICS__METER=meter_topic,
        GRIDSTREAM_TOPICS__SCADA=f"scada-{unique}",
        GRIDSTREAM_TOPICS__FORECASTS=f"fc-{unique}",
        GRIDSTREAM_TOPICS__ANOMALIES=f"an-{unique}",
        GRIDSTREAM_TOPICS__DEAD_LETTERS=f"dl-{unique}",
        GRIDSTREAM_CLICKHOUSE__BACKEND="server",
        GRIDSTREAM_CLICKHOUSE__HOST="127.0.0.1",
        GRIDSTREAM_CLICKHOUSE__PORT=str(clickhouse.port),
        GRIDSTREAM_CLICKHOUSE__USERNAME=USER,
        GRIDSTREAM_CLICKHOUSE__PASSWORD=PASSWORD,
        GRIDSTREAM_CLICKHOUSE__DATABASE=f"a_{unique}",
        GRIDSTREAM_CLICKHOUSE__CONNECT_TIMEOUT_S="2",
        GRIDSTREAM_PROCESSING__MODELS_DIR=str(store),
        GRIDSTREAM_PROCESSING__MODELS_POLL_S="1",
        GRIDSTREAM_PROCESSING__STATE_DIR=str(tmp_path / "state"),
        GRIDSTREAM_HTTP_PORT=str(http_port),
    )
    log = (tmp_path / "gridstream.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    webhook = Webhook()
    start_ms = (int(time.time() * 1000) // STEP_MS - 21 * 96) * STEP_MS  # on the grid

    def committed_batches() -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback http
                f"http://127.0.0.1:{http_port}/health", timeout=2
            ) as resp:
                return (orjson.loads(resp.read())["batches"] or 0) >= 5
        except OSError:
            return False

    try:
        _wait("the processor's HTTP endpoint", committed_batches_or_up(http_port), 60, proc)
        feeder = Feeder(broker.bootstrap, meter_topic, start_ms)
        # Prometheus starts once the windows are warm (two days of data): what a cold start
        # counts before its first scrape is no increase to a rule.
        with (
            feeder,
            _warm(feeder, 2 * 96),
            prometheus_stack(
                tmp_path / "prom",
                f"127.0.0.1:{http_port}",
                webhook.url,
                (free_port(), free_port()),
            ) as prom,
        ):
            _wait("batches committed", committed_batches, 90, proc)
            _wait(
                "a scrape of the processor",
                lambda: any(r["value"][1] == "1" for r in prom.query('up{job="gridstream"}')),
                30,
                proc,
            )
            # -- healthy: longer than every shortened `for` that a healthy run could reach
            time.sleep(20)
            assert prom.alerts() == [], "an alert is pending or firing on a healthy run"
            assert webhook.firing() == set()

            def received(alert: str, timeout_s: float = 90) -> None:
                _wait(f"{alert} at the webhook", lambda: alert in webhook.firing(), timeout_s, proc)

            # -- a dead-letter flood
            feeder.flood(3000)
            received("GridstreamDeadLetterRateHigh")
            # -- a stale model store: the promoted set cannot be read
            (store / "current.json").write_text("{not a pointer")
            received("GridstreamModelStoreStale")
            # -- ClickHouse refusing connections
            clickhouse.refuse()
            received("GridstreamClickHouseInsertFailures")
            clickhouse.serve()
            # -- the broker stopped
            broker.stop()
            received("GridstreamUnhealthy")
            time.sleep(3)  # failed commits are left to the next batch: it waits, it does not die
            assert proc.poll() is None, "the processor exited while the broker was away"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        webhook.close()


@contextlib.contextmanager
def _warm(feeder: Feeder, steps: int) -> Iterator[None]:
    deadline = time.monotonic() + 120
    while feeder.steps < steps and time.monotonic() < deadline:
        time.sleep(0.2)
    yield


def committed_batches_or_up(port: int) -> Callable[[], bool]:
    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).close()  # noqa: S310
            return True
        except OSError:
            return False

    return up
