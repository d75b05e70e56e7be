"""Health rules with an injectable clock, and the HTTP endpoints that serve them."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streams.ops.health import Health, Status
from streams.ops.http import HttpServer, probe, start_http_server
from streams.ops.metrics import GridMetrics
from streams.ops.monitor import Monitor


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> Health:
    return Health(
        models_loaded=3,
        stall_after_s=60,
        loop_timeout_s=300,
        clock=clock,
        wall=lambda: 1_700_000_000.25,
    )


def running(health: Health) -> Health:
    health.loop_started()
    health.kafka_connected()
    health.clickhouse_connected()
    return health


def test_starting_is_critical_until_the_loop_runs_and_kafka_answers(health: Health) -> None:
    report = health.evaluate()
    assert report.status is Status.CRITICAL and report.http_status == 503
    assert report.kafka == "connecting" and report.clickhouse == "unknown"
    assert any("not started" in r for r in report.reasons)
    health.loop_started()
    assert health.evaluate().status is Status.CRITICAL  # kafka still connecting
    health.kafka_connected()
    assert health.evaluate().status is Status.OK


def test_report_body_has_the_documented_fields(health: Health, clock: Clock) -> None:
    running(health)
    clock.now += 12.5
    body = health.evaluate().to_dict()
    assert body["status"] == "ok"
    assert body["uptime"] == 12.5
    assert body["models_loaded"] == 3
    assert body["kafka"] == "connected" and body["clickhouse"] == "connected"
    assert body["timestamp"] == "2023-11-14T22:13:20.250Z"
    assert datetime.fromisoformat(body["timestamp"]).utcoffset().total_seconds() == 0
    assert body["reasons"] == []


def test_kafka_unreachable_is_critical_and_recovers(health: Health) -> None:
    running(health)
    health.kafka_disconnected("1/1 brokers are down")
    report = health.evaluate()
    assert report.status is Status.CRITICAL and report.kafka == "disconnected"
    assert report.reasons == ["kafka disconnected: 1/1 brokers are down"]
    health.kafka_connected()
    assert health.evaluate().status is Status.OK


def test_a_fatal_kafka_error_sticks(health: Health) -> None:
    running(health)
    health.kafka_failed("_FENCED: producer fenced", fatal=True)
    health.kafka_connected()  # a broker answering does not repair a fatal client
    assert health.evaluate().kafka == "failed"
    assert health.evaluate().status is Status.CRITICAL


def test_authentication_failure_is_critical_until_a_broker_accepts_us(health: Health) -> None:
    running(health)
    health.kafka_failed("SASL_AUTHENTICATION_FAILED: bad credentials")
    assert health.evaluate().status is Status.CRITICAL
    health.kafka_connected()
    assert health.evaluate().status is Status.OK


def test_clickhouse_failing_is_degraded_not_critical(health: Health) -> None:
    running(health)
    health.output_failed("clickhouse", "Too many parts (TOO_MANY_PARTS)")
    report = health.evaluate()
    assert report.status is Status.DEGRADED and report.http_status == 200
    assert report.clickhouse == "failing"
    assert "clickhouse output failing" in report.reasons[0]
    health.output_ok("clickhouse")
    report = health.evaluate()
    assert report.status is Status.OK and report.clickhouse == "connected"


def test_kafka_output_failing_is_degraded(health: Health) -> None:
    running(health)
    health.output_failed("kafka", "3 records still unacknowledged")
    assert health.evaluate().status is Status.DEGRADED
    assert health.evaluate().kafka == "connected"
    health.output_ok("kafka")
    assert health.evaluate().status is Status.OK


def test_disabled_clickhouse_stays_disabled(clock: Clock) -> None:
    health = Health(clickhouse_enabled=False, clock=clock)
    running(health)
    health.output_ok("clickhouse")
    assert health.evaluate().clickhouse == "disabled"
    assert health.evaluate().status is Status.OK


def test_no_progress_while_input_is_pending_is_degraded(health: Health, clock: Clock) -> None:
    running(health)
    health.input_lag(0)
    clock.now += 600  # idle with nothing to do: fine
    health.heartbeat()
    assert health.evaluate().status is Status.OK
    health.input_lag(500)  # input arrives: the stall clock starts now
    clock.now += 59
    health.heartbeat()
    assert health.evaluate().status is Status.OK
    clock.now += 2
    health.heartbeat()
    report = health.evaluate()
    assert report.status is Status.DEGRADED
    assert "500 records are pending" in report.reasons[0]
    health.batch_done()
    assert health.evaluate().status is Status.OK


def test_a_stuck_loop_is_critical(health: Health, clock: Clock) -> None:
    running(health)
    clock.now += 301
    report = health.evaluate()
    assert report.status is Status.CRITICAL
    assert "unresponsive for 301 s" in report.reasons[0]
    health.heartbeat()
    assert health.evaluate().status is Status.OK


def test_a_stopped_loop_is_critical_with_its_error(health: Health) -> None:
    running(health)
    health.loop_stopped("QueryFailed: insert into db.dead_letters failed")
    report = health.evaluate()
    assert report.status is Status.CRITICAL
    assert report.reasons == [
        "processing loop stopped: QueryFailed: insert into db.dead_letters failed"
    ]


def test_critical_wins_over_degraded_and_lists_every_reason(health: Health) -> None:
    running(health)
    health.output_failed("clickhouse", "down")
    health.kafka_disconnected("down")
    report = health.evaluate()
    assert report.status is Status.CRITICAL
    assert len(report.reasons) == 2
    assert report.reasons[0].startswith("kafka")  # critical reasons first


# -- the HTTP server ---------------------------------------------------------------------------
@pytest.fixture
def server(health: Health) -> Iterator[HttpServer]:
    registry = CollectorRegistry()
    metrics = GridMetrics(registry)
    metrics.bind(health_level=health.level)
    metrics.set_models({"nowcast": "baseline@1"})
    srv = start_http_server(
        0, health, registry, lambda: {"models": [{"name": "nowcast"}]}, host="127.0.0.1"
    )
    yield srv
    srv.stop()


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers["Content-Type"]


def test_health_endpoint_answers_503_when_critical_and_200_otherwise(
    server: HttpServer, health: Health
) -> None:
    status, body, ctype = get(f"{server.url}/health")
    assert status == 503 and ctype == "application/json"
    assert orjson.loads(body)["status"] == "critical"
    assert probe(f"{server.url}/health") == 1
    running(health)
    health.output_failed("clickhouse", "down")
    status, body, _ = get(f"{server.url}/health")
    assert status == 200 and orjson.loads(body)["status"] == "degraded"
    assert probe(f"{server.url}/health") == 0


def test_gridstream_health_probes_the_configured_port(
    server: HttpServer, health: Health, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.cli import main

    monkeypatch.setenv("GRIDSTREAM_HTTP_PORT", str(server.port))
    assert main(["health"]) == 1  # critical: not running yet
    running(health)
    assert main(["health"]) == 0
    monkeypatch.setenv("GRIDSTREAM_HTTP_PORT", "0")  # HTTP off: nothing answers
    assert main(["health"]) == 1


def test_metrics_and_models_endpoints(server: HttpServer, health: Health) -> None:
    running(health)
    status, body, ctype = get(f"{server.url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    values = {
        s.name: s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }
    assert values["gridstream_health_status"] == 0
    assert values["gridstream_models_loaded"] == 1
    status, body, _ = get(f"{server.url}/models")
    assert status == 200 and orjson.loads(body) == {"models": [{"name": "nowcast"}]}
    status, _, _ = get(f"{server.url}/nope")
    assert status == 404


def test_stop_releases_the_port(server: HttpServer) -> None:
    server.stop()
    assert probe(f"{server.url}/health", timeout_s=1) == 1
    server.stop()  # idempotent


# -- what the Kafka clients report, through the monitor ----------------------------------------
def stats(*brokers: tuple[str, int]) -> str:
    return orjson.dumps(
        {"brokers": {f"b{i}": {"state": s, "nodeid": n} for i, (s, n) in enumerate(brokers)}}
    ).decode()


def test_kafka_state_follows_client_statistics_and_errors() -> None:
    monitor = Monitor()
    health = monitor.health
    monitor._on_stats(stats(("UP", -1)))  # only the bootstrap connection: not yet
    assert health.kafka == "connecting"
    monitor._on_stats(stats(("UP", 1), ("INIT", -1)))
    assert health.kafka == "connected"
    monitor._on_error(KafkaError(KafkaError._TRANSPORT))  # one connection dropped: no verdict
    assert health.kafka == "connected"
    monitor._on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert health.kafka == "disconnected"
    monitor._on_stats(stats(("UP", -1), ("INIT", 1)))  # the group coordinator alone: still down
    assert health.kafka == "disconnected"
    monitor._on_stats(stats(("UP", 1)))
    assert health.kafka == "connected"
    monitor._on_stats(stats(("CONNECT", 1), ("INIT", -1)))
    assert health.kafka == "disconnected"
    monitor._on_error(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED))
    assert health.kafka == "failed"
    errors = monitor.registry.get_sample_value
    assert errors("gridstream_kafka_errors_total", {"error": "_ALL_BROKERS_DOWN"}) == 1
    assert errors("gridstream_kafka_errors_total", {"error": "SASL_AUTHENTICATION_FAILED"}) == 1


class _Watermarks:
    """What ``_lag`` reads of a consumer: cached (low, high) watermarks of one partition."""

    def __init__(self, high: int) -> None:
        self.high = high

    def get_watermark_offsets(self, _tp: object, cached: bool = False) -> tuple[int, int]:
        assert cached, "lag must come from cached fetch metadata, not a broker round trip"
        return 0, self.high


def test_lag_is_watermark_minus_position_never_negative_and_unknown_before_a_fetch() -> None:
    from confluent_kafka import TopicPartition

    from streams.ops.monitor import _lag

    assert _lag(_Watermarks(120), TopicPartition("t", 0, 100)) == 20  # type: ignore[arg-type]
    # a watermark cached before the position moved on: 0, not a negative lag
    assert _lag(_Watermarks(90), TopicPartition("t", 0, 100)) == 0  # type: ignore[arg-type]
    assert _lag(_Watermarks(-1), TopicPartition("t", 0, 100)) is None  # type: ignore[arg-type]
    assert _lag(_Watermarks(120), TopicPartition("t", 0, -1001)) is None  # type: ignore[arg-type]
