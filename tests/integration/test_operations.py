"""Operations on real parts: scrape /metrics, /health and /models of a running processor on the
embedded broker and chDB, and watch health follow ClickHouse and Kafka going away and back."""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import certifi
import orjson
import pyarrow as pa
import pytest
import yaml
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend, ClickHouseBackend, QueryResult, ServerBackend
from sinks.exceptions import SinkError
from streams.cli import _secrets
from streams.config import (
    KafkaSettings,
    Settings,
    load_settings,
)
from streams.ops.http import HttpServer, start_http_server
from streams.ops.monitor import Monitor
from streams.runtime.runner import StreamRunner, ensure_topics
from streams.runtime.wiring import clickhouse_backend
from streams.state.tasks import TaskSet
from streams.tools.broker import EmbeddedBroker
from tests.integration.conftest import RunnerThread, make_settings, wait_until
from tests.integration.helpers import produce

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEP_MS = 900_000
PARTITIONS = 2


class LockedBackend:
    """One chDB session used by the runner thread and the test thread, one statement at a time."""

    def __init__(self, inner: ClickHouseBackend) -> None:
        self.inner = inner
        self.lock = threading.Lock()

    def command(self, sql: str) -> None:
        with self.lock:
            self.inner.command(sql)

    def query(self, sql: str) -> QueryResult:
        with self.lock:
            return self.inner.query(sql)

    def insert_arrow(self, database: str, table: str, data: pa.Table, **options: Any) -> None:
        with self.lock:
            self.inner.insert_arrow(database, table, data, **options)

    def close(self) -> None:
        self.inner.close()


def _settings(bootstrap: str, unique: str, chdb_path: Path) -> Settings:
    return make_settings(
        bootstrap, unique, chdb_path, group="ops", partitions=PARTITIONS, cooldown_s=0
    )


def _meters(start_ms: int, steps: range) -> list[tuple[bytes, bytes]]:
    """Three meters on a 15-minute grid (forecast targets land on readings), one spike."""
    out = []
    for i in steps:
        for m in range(3):
            kw = 2.0 + 0.5 * m + 0.05 * ((i * 7 + m) % 5)
            if m == 0 and i == 50:
                kw = 25.0
            doc = {"meter_id": f"m{m}", "ts": start_ms + i * STEP_MS, "kw": kw}
            out.append((f"m{m}".encode(), orjson.dumps(doc)))
    return out


# -- scraping ----------------------------------------------------------------------------------
class Scrape:
    """One /metrics answer: sample values by (name, labels), and every exported name."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.names: set[str] = set()
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
        }
        for fam in text_string_to_metric_families(text):
            self.names.add(fam.name)
            self.names.update(fam.name + s for s in suffixes.get(fam.type, ()))
            for s in fam.samples:
                self.names.add(s.name)
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls), _ in self.samples.items() if n == name]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scrape(server: HttpServer) -> Scrape:
    status, body = _get(f"{server.url}/metrics")
    assert status == 200
    return Scrape(body.decode())


def health(server: HttpServer) -> tuple[int, dict[str, Any]]:
    status, body = _get(f"{server.url}/health")
    return status, orjson.loads(body)


def health_is(server: HttpServer, status: str) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        code, body = health(server)
        assert code == (503 if body["status"] == "critical" else 200), body
        return body if body["status"] == status else None

    return probe


def names_in_monitoring_config() -> set[str]:
    """Every gridstream_* series named by an alert rule or a dashboard panel."""
    text = (REPO / "docker/prometheus/alerts.yml").read_text()
    for path in sorted((REPO / "docker/grafana/dashboards").glob("*.json")):
        text += path.read_text()
    return set(re.findall(r"\bgridstream_[a-z0-9_]+", text))


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test alone: it is stopped and restarted."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as running:
        yield running


class Processor(RunnerThread):
    """A runner on its own thread with the monitor and HTTP server of ``gridstream run``."""

    def __init__(self, settings: Settings, sink: ClickHouseSink) -> None:
        processor = TaskSet(settings.processing.params())
        self.monitor = Monitor(processor, stats_interval_ms=500, lag_interval_s=0.2)
        self.monitor.health.clickhouse_connected()  # what cmd_run does after ensure_schema
        self.server = start_http_server(
            0, self.monitor.health, self.monitor.registry, self.monitor.models, host="127.0.0.1"
        )
        super().__init__(
            StreamRunner(settings, processor, sink, monitor=self.monitor, max_backoff_s=0.5)
        )

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the runner and the server; the runner's own error is the test's to check."""
        self.stop.set()
        self.thread.join(timeout_s)
        self.server.stop()


# -- the tests ---------------------------------------------------------------------------------
def test_metrics_health_and_models_of_a_running_processor(
    own_broker: EmbeddedBroker, unique: str, chdb_path: Path
) -> None:
    settings = _settings(own_broker.bootstrap, unique, chdb_path)
    ensure_topics(settings)
    backend = LockedBackend(ChdbBackend(chdb_path))
    sink = ClickHouseSink(backend, settings.clickhouse.database)
    sink.ensure_schema()
    db, t = settings.clickhouse.database, settings.topics
    now_ms = int(time.time() * 1000)
    start = now_ms - 64 * STEP_MS
    records = _meters(start, range(60))
    records += [
        (b"m9", b"{not json"),
        (b"m9", orjson.dumps({"meter_id": "m9", "ts": start})),  # no kw
        records[-1],  # an exact redelivery: dropped and counted, not a dead letter
    ]
    produce(own_broker.bootstrap, t.meter, records)
    proc = Processor(settings, sink)
    try:
        # -- a running processor: every metric has the value the runner's own counters have
        m = wait_until(
            "every record consumed",
            lambda: (
                proc.check()
                and (s := scrape(proc.server)).total("gridstream_readings_consumed_total")
                == len(records)
                and s
            ),
        )
        c, batches = proc.runner.stats.counters, proc.runner.stats.batches
        assert m.value("gridstream_readings_consumed_total", topic=t.meter) == len(records)
        assert m.value("gridstream_records_produced_total", topic=t.forecasts) == c["forecasts"]
        assert m.value("gridstream_records_produced_total", topic=t.dead_letters) == 2
        assert m.value("gridstream_dead_letters_total", reason="malformed_json") == 1
        assert m.value("gridstream_dead_letters_total", reason="missing_field") == 1
        assert m.value("gridstream_readings_dropped_total", reason="duplicate") == 1
        anomalies = sum(c[f"anomalies_{s}"] for s in ("info", "warning", "critical"))
        assert anomalies >= 1  # the spike
        assert m.total("gridstream_anomalies_total", entity_kind="meter") == anomalies
        assert m.value("gridstream_records_produced_total", topic=t.anomalies) == anomalies
        assert m.value("gridstream_batch_records_count") == batches
        assert m.value("gridstream_batch_records_sum") == len(records)
        assert m.value("gridstream_batch_duration_seconds_count") == batches
        for stage in ("decode", "process", "deliver", "commit"):
            assert m.value("gridstream_batch_stage_duration_seconds_count", stage=stage) == batches
        for model in ("nowcast", "detectors", "online"):
            count = m.value("gridstream_model_inference_duration_seconds_count", model=model)
            assert count == batches, model
        assert m.value("gridstream_end_to_end_latency_seconds_count") == c["readings"]
        # readings are 4-64 steps old: the latency histogram says so
        assert m.value("gridstream_end_to_end_latency_seconds_sum") > c["readings"] * 4 * 900
        for horizon in ("900", "3600"):  # targets on the 15-minute grid met their readings
            assert m.value("gridstream_forecast_ape_ratio_count", horizon_s=horizon) > 100
        assert m.value("gridstream_drift_events_total") == 0
        assert m.value("gridstream_rebalances_total", event="assign") >= 1
        assert m.value("gridstream_partitions_assigned") == 2 * PARTITIONS
        lag = m.series("gridstream_consumer_lag")
        assert {s["topic"] for s in lag} <= {t.meter, t.scada} and lag
        # one series per input partition the processor holds (the monitor clamps values at 0)
        held = {(topic, str(p)) for topic in (t.meter, t.scada) for p in range(PARTITIONS)}
        assert {(s["topic"], s["partition"]) for s in lag} <= held
        assert m.value("gridstream_clickhouse_insert_duration_seconds_count") >= 1
        assert m.total("gridstream_clickhouse_insert_failures_total") == 0
        assert m.value("gridstream_kafka_publish_duration_seconds_count") >= 1
        assert m.value("gridstream_process_resident_memory_bytes") > 10e6
        assert m.value("gridstream_models_loaded") == 3
        assert m.value("gridstream_entities") == 3
        assert m.value("gridstream_last_batch_timestamp_seconds") >= now_ms / 1000
        assert all(n.startswith("gridstream_") for n in m.names)
        missing = names_in_monitoring_config() - m.names
        assert not missing, (
            f"alerts/dashboards use metrics the processor does not export: {missing}"
        )

        body = wait_until("health ok", health_is(proc.server, "ok"))
        assert body["kafka"] == "connected" and body["clickhouse"] == "connected"
        assert body["models_loaded"] == 3 and body["uptime"] > 0 and body["reasons"] == []
        assert datetime.fromisoformat(body["timestamp"]).utcoffset().total_seconds() == 0
        assert scrape(proc.server).value("gridstream_health_status") == 0

        status, raw = _get(f"{proc.server.url}/models")
        models = orjson.loads(raw)
        assert status == 200
        assert {x["name"] for x in models["models"]} == {"nowcast", "detectors", "online"}
        assert models["params"]["horizons_s"] == [900, 3600]
        assert models["forecast_mape"]["900"]["forecasts_evaluated"] > 100

        # -- ClickHouse refuses inserts (too many parts): degraded, input paused, then back
        backend.command(f"ALTER TABLE {db}.forecasts MODIFY SETTING parts_to_throw_insert = 1")
        more = _meters(start, range(60, 63))
        produce(own_broker.bootstrap, t.meter, more)
        body = wait_until("health degraded", health_is(proc.server, "degraded"))
        assert body["clickhouse"] == "failing" and body["kafka"] == "connected"
        assert "TOO_MANY_PARTS" in body["reasons"][0]
        m = scrape(proc.server)
        assert m.value("gridstream_health_status") == 1
        assert m.value("gridstream_clickhouse_insert_failures_total", retryable="true") >= 1
        assert m.value("gridstream_readings_consumed_total", topic=t.meter) == len(records)

        backend.command(f"ALTER TABLE {db}.forecasts RESET SETTING parts_to_throw_insert")
        body = wait_until("health ok after ClickHouse is back", health_is(proc.server, "ok"))
        assert body["clickhouse"] == "connected"
        consumed = scrape(proc.server).value("gridstream_readings_consumed_total", topic=t.meter)
        assert consumed == len(records) + len(more)

        # -- the broker goes away: critical (503); it comes back: ok
        own_broker.stop()
        body = wait_until("health critical", health_is(proc.server, "critical"))
        assert body["kafka"] == "disconnected"
        assert any(r.startswith("kafka disconnected") for r in body["reasons"])
        assert scrape(proc.server).total("gridstream_kafka_errors_total") >= 1

        own_broker.start()  # same port, empty memory storage: the topics come back empty
        ensure_topics(settings)
        body = wait_until("health ok after the broker is back", health_is(proc.server, "ok"))
        assert body["kafka"] == "connected"
        assert proc.error is None

        # -- a stopped processor is critical
        proc.stop.set()
        proc.thread.join(60)
        body = wait_until("health critical after stop", health_is(proc.server, "critical"))
        assert "processing loop stopped" in body["reasons"][0]
    finally:
        proc.close()
        backend.command(f"DROP DATABASE IF EXISTS {db}")
        backend.close()
    assert proc.error is None, proc.error


def test_a_processor_stopped_by_an_output_error_reports_it(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    """A table that is gone is not retried: the loop stops and /health says why (503)."""
    settings = _settings(bootstrap, unique, chdb_path)
    ensure_topics(settings)
    backend = ChdbBackend(chdb_path)
    sink = ClickHouseSink(backend, settings.clickhouse.database)
    sink.ensure_schema()
    db = settings.clickhouse.database
    backend.command(f"DETACH TABLE {db}.dead_letters")
    produce(bootstrap, settings.topics.meter, [(b"m1", b"{broken")])
    proc = Processor(settings, sink)
    try:
        proc.thread.join(120)
        assert isinstance(proc.error, SinkError)
        code, body = health(proc.server)
        assert code == 503 and body["status"] == "critical"
        assert "dead_letters" in body["reasons"][0] and "stopped" in body["reasons"][0]
        m = scrape(proc.server)
        assert m.value("gridstream_clickhouse_insert_failures_total", retryable="false") == 1
        assert m.value("gridstream_health_status") == 2
    finally:
        proc.close()
        backend.command(f"ATTACH TABLE {db}.dead_letters")
        backend.command(f"DROP DATABASE IF EXISTS {db}")
        backend.close()


# -- security settings -------------------------------------------------------------------------
def test_kafka_security_settings_reach_consumer_producer_and_admin(tmp_path: Path) -> None:
    secure = KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="gridstream",
        sasl_password="kafka-Secret-1",  # noqa: S106 - a fake
        ssl_ca_location=certifi.where(),
    )
    settings = load_settings(kafka=secure)
    runner = StreamRunner(settings, monitor=Monitor())
    wanted = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "gridstream",
        "sasl.password": "kafka-Secret-1",
        "ssl.ca.location": certifi.where(),
    }
    configs = {
        "consumer": runner.consumer_config(),
        "producer": runner.producer_config(),
        "admin": settings.kafka.client_config(),  # what ensure_topics gives AdminClient
    }
    for role, conf in configs.items():
        assert wanted.items() <= conf.items(), role
    # librdkafka accepts them (it loads the CA file and checks the SASL mechanism)...
    Consumer(configs["consumer"]).close()
    Producer(configs["producer"]).flush(0)
    AdminClient(configs["admin"])
    # ...and really reads them: a CA file that is not there fails every client at creation
    broken = load_settings(
        kafka=secure.model_copy(update={"ssl_ca_location": str(tmp_path / "no-such-ca.pem")})
    )
    broken_runner = StreamRunner(broken)
    for make in (
        lambda: Consumer(broken_runner.consumer_config()),
        lambda: Producer(broken_runner.producer_config()),
        lambda: AdminClient(broken.kafka.client_config()),
    ):
        with pytest.raises(KafkaException, match="ssl.ca.location"):
            make()
    # the password is in no repr and no error message of the settings
    assert "kafka-Secret-1" not in repr(settings)
    assert "kafka-Secret-1" in _secrets(settings)  # so the log filter blanks it


def test_clickhouse_password_from_a_secrets_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "clickhouse_password"
    secret.write_text("ch-Secret-2\n")
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__BACKEND", "server")
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__HOST", "127.0.0.1")
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__USERNAME", "gridstream")
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__PASSWORD_FILE", str(secret))
    settings = load_settings()
    backend = clickhouse_backend(settings)
    assert isinstance(backend, ServerBackend)
    assert backend._secret() == "ch-Secret-2"  # the file's content, newline stripped
    assert "ch-Secret-2" not in repr(backend) and "ch-Secret-2" not in repr(settings)
    assert _secrets(settings) == ["ch-Secret-2"]
    # the compose file's processor reads its password the same way
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = compose["services"]["processor"]["environment"]
    assert env["GRIDSTREAM_CLICKHOUSE__PASSWORD_FILE"].startswith("/run/secrets/")
    assert "GRIDSTREAM_CLICKHOUSE__PASSWORD" not in env
