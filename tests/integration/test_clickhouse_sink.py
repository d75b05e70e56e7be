"""The ClickHouse sink on the real engine, one fresh database per test, no mocks.

Every test taking ``backend`` runs twice: on embedded chDB and on clickhouse-connect over HTTP to
the test-only endpoint (``tests/chserver``), which executes in the same chDB.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend, ClickHouseBackend, ServerBackend
from sinks.ddl import EXPECTED_TABLES, LATEST_VERSION, MIGRATIONS
from sinks.exceptions import (
    EmbeddedInUse,
    QueryFailed,
    SchemaMismatch,
    SinkConfigError,
    SinkError,
    SinkUnavailable,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = 1_718_000_000_000  # 2024-06-10T06:13:20Z
NOW = T0 + 5_000


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@pytest.fixture
def backend(ch_backend: ClickHouseBackend) -> ClickHouseBackend:
    return ch_backend


@pytest.fixture
def chdb_backend(chdb_path: Path) -> Iterator[ChdbBackend]:
    chdb = ChdbBackend(chdb_path)
    yield chdb
    chdb.close()


@pytest.fixture
def database(unique: str) -> str:
    return f"gs_{unique}"


@pytest.fixture
def sink(backend: ClickHouseBackend, database: str) -> Iterator[ClickHouseSink]:
    out = ClickHouseSink(backend, database)
    out.ensure_schema()
    yield out
    backend.command(f"DROP DATABASE IF EXISTS `{database}`")


def rows(sink: ClickHouseSink, sql: str) -> list[dict[str, object]]:
    result = sink.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.rows]


def scalar(sink: ClickHouseSink, sql: str) -> object:
    return sink.query(sql).rows[0][0]


def forecast_batch() -> ForecastBatch:
    return ForecastBatch(
        entity=np.array(["m-1", "m-1", "feeder-7"], dtype=object),
        kind=np.array(["meter", "meter", "feeder"], dtype=object),
        issued_ms=np.array([T0, T0, T0 + 1], dtype=np.int64),
        horizon_s=np.array([900, 3600, 900], dtype=np.int64),
        target_ms=np.array([T0 + 900_000, T0 + 3_600_000, T0 + 900_001], dtype=np.int64),
        p10=np.array([1.0, math.nan, -2.5], dtype=np.float64),
        p50=np.array([1.5, math.inf, 0.0], dtype=np.float64),
        p90=np.array([2.25, -math.inf, 3.0], dtype=np.float64),
        model="ensemble@3",
    )


def anomaly(event_id: str = "e1", ts_ms: int = T0) -> AnomalyRecord:
    return AnomalyRecord(
        event_id=event_id,
        entity_id="tx-9",
        entity_kind="transformer",
        ts_ms=ts_ms,
        score=0.93,
        severity="critical",
        detectors={"hst": 0.91, "zscore": 0.99},
        fired=["zscore", "hst"],
        explanation=[{"feature": "value", "value": 7.5, "expected": 1.25, "deviation": 8.0}],
        reading={"p_mw": 7.5, "quality": None, "asset_kind": "transformer"},
        model_versions={"ensemble": "3", "hst": "online"},
        detected_ms=T0 + 20,
    )


def dead_letter(offset: int, raw: bytes, key: bytes | None) -> DeadLetterRecord:
    return DeadLetterRecord(
        source_topic="grid.readings",
        source_partition=2,
        source_offset=offset,
        key=key,
        raw=raw,
        error_class="malformed_json",
        error="line 1 column 1: expected value",
        dead_lettered_ms=T0 + 7,
    )


# ------------------------------------------------------------------------------------- schema


def test_schema_is_applied_once_and_matches_the_declared_tables(
    sink: ClickHouseSink, backend: ClickHouseBackend, database: str
) -> None:
    assert sink.ensure_schema() == LATEST_VERSION  # second time: nothing to do, still valid
    assert ClickHouseSink(backend, database).ensure_schema() == LATEST_VERSION
    assert sink.schema_version() == LATEST_VERSION
    versions = rows(
        sink, f"SELECT version FROM `{database}`.schema_migrations FINAL ORDER BY version"
    )
    assert versions == [{"version": m.version} for m in MIGRATIONS]
    # The declared shape (what the check compares) is exactly what the DDL created.
    for name, spec in EXPECTED_TABLES.items():
        got = sink.query(
            "SELECT name, type FROM system.columns "
            f"WHERE database = '{database}' AND table = '{name}' ORDER BY position"
        ).rows
        assert got == list(spec.column_types().items()), name
        assert (
            scalar(
                sink,
                "SELECT engine FROM system.tables "
                f"WHERE database = '{database}' AND name = '{name}'",
            )
            == spec.engine_name
        )


def test_a_hand_made_table_with_another_schema_is_refused(
    backend: ClickHouseBackend, database: str
) -> None:
    backend.command(f"CREATE DATABASE `{database}`")
    backend.command(
        f"CREATE TABLE `{database}`.forecasts (entity_id String, p50 Float32) "
        "ENGINE = MergeTree ORDER BY entity_id"
    )
    sink = ClickHouseSink(backend, database)
    try:
        with pytest.raises(SchemaMismatch) as err:
            sink.ensure_schema()
        assert err.value.table == "forecasts"
        text = str(err.value)
        assert f"{database}.forecasts" in text
        assert "column p50 is Float32, expected Float64" in text
        assert "engine MergeTree, expected ReplacingMergeTree" in text
        assert "column unit missing" in text
        assert "anomalies" not in text  # the tables gridstream made itself are fine
        assert not err.value.retryable
        assert sink.schema_version() == 0  # a refused schema is not recorded as applied
    finally:
        backend.command(f"DROP DATABASE IF EXISTS `{database}`")


def test_database_names_are_identifiers_only(backend: ClickHouseBackend) -> None:
    with pytest.raises(SinkConfigError, match="invalid ClickHouse database name"):
        ClickHouseSink(backend, "x; DROP DATABASE system")


# ------------------------------------------------------------------------------------- writes


def test_forecasts_round_trip_with_utc_times_units_and_non_finite_quantiles(
    sink: ClickHouseSink, database: str
) -> None:
    sink.write(forecast_batch(), [], [], now_ms=NOW)
    got = rows(
        sink,
        f"SELECT * FROM `{database}`.forecasts FINAL ORDER BY entity_id, horizon_s",
    )
    assert [r["entity_id"] for r in got] == ["feeder-7", "m-1", "m-1"]
    feeder, m900, m3600 = got
    assert feeder == {
        "entity_id": "feeder-7",
        "entity_kind": "feeder",
        "issued_at": utc(T0 + 1),
        "horizon_s": 900,
        "target_ts": utc(T0 + 900_001),
        "p10": -2.5,
        "p50": 0.0,
        "p90": 3.0,
        "unit": "MW",
        "model": "ensemble@3",
        "written_at": utc(NOW),
    }
    assert feeder["issued_at"].utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert (m900["unit"], m900["p10"], m900["p50"], m900["p90"]) == ("kW", 1.0, 1.5, 2.25)
    assert math.isnan(m3600["p10"])  # type: ignore[arg-type]
    assert (m3600["p50"], m3600["p90"]) == (math.inf, -math.inf)
    assert scalar(sink, f"SELECT toString(issued_at) FROM `{database}`.forecasts LIMIT 1") in {
        "2024-06-10 06:13:20.000",
        "2024-06-10 06:13:20.001",
    }


def test_anomalies_round_trip_with_maps_arrays_and_json(
    sink: ClickHouseSink, database: str
) -> None:
    record = anomaly()
    sink.write(ForecastBatch.empty(), [record], [], now_ms=NOW)
    (got,) = rows(sink, f"SELECT * FROM `{database}`.anomalies")
    assert {k: v for k, v in got.items() if k not in ("explanation", "reading")} == {
        "event_id": "e1",
        "entity_id": "tx-9",
        "entity_kind": "transformer",
        "ts": utc(T0),
        "score": 0.93,
        "severity": "critical",
        "detectors": {"hst": 0.91, "zscore": 0.99},
        "fired": ["zscore", "hst"],
        "model_versions": {"ensemble": "3", "hst": "online"},
        "detected_at": utc(T0 + 20),
    }
    assert orjson.loads(got["explanation"]) == record.explanation  # type: ignore[arg-type]
    assert orjson.loads(got["reading"]) == record.reading  # type: ignore[arg-type]
    # The columns are usable from SQL, not only as text.
    assert scalar(sink, f"SELECT detectors['zscore'] FROM `{database}`.anomalies") == 0.99
    assert scalar(sink, f"SELECT has(fired, 'hst') FROM `{database}`.anomalies") == 1
    assert (
        scalar(sink, f"SELECT JSONExtractFloat(reading, 'p_mw') FROM `{database}`.anomalies") == 7.5
    )


def test_dead_letters_keep_the_original_bytes(sink: ClickHouseSink, database: str) -> None:
    invalid = b"\xff\xfe{\x00not json\x80"
    sink.write(
        ForecastBatch.empty(),
        [],
        [dead_letter(10, invalid, None), dead_letter(11, '{ "kw": "é"'.encode(), b"m-\xc3")],
        now_ms=NOW,
    )
    got = rows(sink, f"SELECT * FROM `{database}`.dead_letters ORDER BY source_offset")
    assert got[0]["raw"] == invalid  # not UTF-8: stays bytes, byte for byte
    assert got[0]["key"] is None
    assert got[1]["raw"] == '{ "kw": "é"'  # valid UTF-8 reads back as str
    assert got[1]["key"] == b"m-\xc3"
    assert got[0] | {"raw": None, "key": None} == {
        "source_topic": "grid.readings",
        "source_partition": 2,
        "source_offset": 10,
        "key": None,
        "raw": None,
        "error_class": "malformed_json",
        "error": "line 1 column 1: expected value",
        "dead_lettered_at": utc(T0 + 7),
    }
    first_raw = f"SELECT hex(raw) FROM `{database}`.dead_letters ORDER BY source_offset LIMIT 1"
    assert scalar(sink, first_raw) == invalid.hex().upper()


def test_a_replayed_batch_is_dropped_at_insert(sink: ClickHouseSink, database: str) -> None:
    letters = [dead_letter(1, b"x", b"k"), dead_letter(2, b"y", None)]
    anomalies = [anomaly("e1", T0), anomaly("e2", T0 + 1000)]
    sink.write(forecast_batch(), anomalies, letters, now_ms=NOW)
    sink.write(forecast_batch(), anomalies, letters, now_ms=NOW)  # a retry
    sink.write(forecast_batch(), anomalies, letters, now_ms=NOW + 60_000)  # a replay, re-stamped
    for table, expected in (("forecasts", 3), ("anomalies", 2), ("dead_letters", 2)):
        # no FINAL: the insert deduplication token kept the copies out of the table
        assert scalar(sink, f"SELECT count() FROM `{database}`.{table}") == expected, table
    first = scalar(sink, f"SELECT max(written_at) FROM `{database}`.forecasts")
    assert first == utc(NOW)  # the first copy stays


def test_a_changed_record_replaces_the_old_one(sink: ClickHouseSink, database: str) -> None:
    sink.write(forecast_batch(), [], [], now_ms=NOW)
    changed = dataclasses.replace(forecast_batch(), p50=np.array([9.0, 9.0, 9.0]))
    sink.write(changed, [], [], now_ms=NOW + 60_000)  # same keys, new values: not a duplicate
    assert scalar(sink, f"SELECT count() FROM `{database}`.forecasts") == 6
    got = rows(sink, f"SELECT p50, written_at FROM `{database}`.forecasts FINAL")
    assert got == [{"p50": 9.0, "written_at": utc(NOW + 60_000)}] * 3  # the newest copy wins


def test_empty_inputs_write_nothing(sink: ClickHouseSink, database: str) -> None:
    sink.write(ForecastBatch.empty("m@1"), [], [], now_ms=NOW)
    for table in ("forecasts", "anomalies", "dead_letters"):
        assert scalar(sink, f"SELECT count() FROM `{database}`.{table}") == 0


def test_insert_errors_name_the_table_and_not_the_payload(
    backend: ClickHouseBackend, database: str
) -> None:
    sink = ClickHouseSink(backend, database)  # schema never ensured: the table does not exist
    with pytest.raises(QueryFailed) as err:
        sink.write(forecast_batch(), [], [], now_ms=NOW)
    assert err.value.table == "forecasts"
    assert f"into {database}.forecasts" in str(err.value)
    assert "feeder-7" not in str(err.value)
    assert not err.value.retryable


def test_unconvertible_values_name_the_table(sink: ClickHouseSink, database: str) -> None:
    batch = forecast_batch()
    bad = dataclasses.replace(batch, horizon_s=np.array([900, -1, 900], dtype=np.int64))
    with pytest.raises(SinkError, match=f"{database}.forecasts") as err:
        sink.write(bad, [], [], now_ms=NOW)
    assert err.value.table == "forecasts"


def test_query_passthrough_reports_engine_errors(sink: ClickHouseSink) -> None:
    assert sink.query("SELECT 1 AS one, 'a' AS letter") == (("one", "letter"), [(1, "a")])
    with pytest.raises(QueryFailed, match="UNKNOWN_IDENTIFIER"):
        sink.query("SELECT no_such_column")


# ------------------------------------------------------------------------------------ backends


def test_one_session_per_path_is_shared(chdb_backend: ChdbBackend, chdb_path: Path) -> None:
    backend = chdb_backend
    other = ChdbBackend(chdb_path)
    assert other.session is backend.session
    other.close()
    other.close()  # idempotent
    assert backend.query("SELECT 2").rows == [(2,)]  # the first user still has its session


def test_a_second_path_in_this_process_is_refused(
    chdb_backend: ChdbBackend, chdb_path: Path, tmp_path: Path
) -> None:
    other = tmp_path / "elsewhere"
    with pytest.raises(EmbeddedInUse) as err:
        ChdbBackend(other)
    assert str(chdb_path.resolve()) in str(err.value)
    assert str(other.resolve()) in str(err.value)
    assert not other.exists()


def test_a_directory_held_by_another_process_is_refused(chdb_backend: ChdbBackend) -> None:
    backend = chdb_backend
    code = (
        "import sys\n"
        "from sinks.clickhouse_backend import ChdbBackend\n"
        "from sinks.exceptions import EmbeddedInUse\n"
        "try:\n"
        "    ChdbBackend(sys.argv[1])\n"
        "except EmbeddedInUse as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, backend.path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"the embedded ClickHouse at {backend.path} is in use by another process" in done.stdout


def test_server_backend_keeps_the_password_out_of_repr_and_errors() -> None:
    password = "hunter2-Sup3rSecret"  # noqa: S105 -- a fake, to look for in messages
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ServerBackend(
        "127.0.0.1", port, "gridstream", password, connect_timeout=2, send_receive_timeout=2
    )
    assert password not in repr(server)
    assert password not in str(vars(server))
    with pytest.raises(SinkUnavailable) as err:
        server.query("SELECT 1")
    assert err.value.retryable
    assert f"127.0.0.1:{port}" in str(err.value)
    assert password not in str(err.value)
    server.close()
