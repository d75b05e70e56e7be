"""Schema versions and retention on the real engine, both backends: a version-1 database moves to
version 2 with its rows, retention follows the configuration, views never replace a table."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from schemas.batch import ForecastBatch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_common import ClickHouseBackend
from sinks.ddl import BOOTSTRAP, LATEST_VERSION, MIGRATIONS, Retention, render
from sinks.exceptions import SchemaMismatch, SinkConfigError
from sinks.views import ALL_VIEWS

pytestmark = pytest.mark.integration

T0 = 1_718_000_000_000


@pytest.fixture
def database(ch_backend: ClickHouseBackend, unique: str) -> Iterator[str]:
    name = f"gm_{unique}"
    yield name
    ch_backend.command(f"DROP DATABASE IF EXISTS `{name}`")


def _scalar(backend: ClickHouseBackend, sql: str) -> object:
    return backend.query(sql).rows[0][0]


def _engine_full(backend: ClickHouseBackend, db: str, table: str) -> str:
    sql = f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = '{table}'"
    return str(_scalar(backend, sql))


def _batch(n: int, t0: int = T0) -> ForecastBatch:
    issued = t0 + np.arange(n, dtype=np.int64) * 900_000
    return ForecastBatch(
        np.array([f"m-{i % 3}" for i in range(n)], dtype=object),
        np.array(["meter"] * n, dtype=object),
        issued,
        np.full(n, 900, dtype=np.int64),
        issued + 900_000,
        np.ones(n),
        np.full(n, 2.0),
        np.full(n, 3.0),
        "m@1",
    )


def test_a_version_1_database_migrates_to_the_latest_with_its_rows(
    ch_backend: ClickHouseBackend, database: str
) -> None:
    # Version 1 exactly as it was released, with rows written the version-1 way.
    for statement in (*BOOTSTRAP, *MIGRATIONS[0].statements):
        ch_backend.command(render(statement, database))
    ch_backend.command(
        f"INSERT INTO `{database}`.schema_migrations VALUES (1, 'v1', now64(3, 'UTC'))"
    )
    ch_backend.command(
        f"INSERT INTO `{database}`.forecasts VALUES ('m-9', 'meter', {T0}, 900, {T0 + 900_000}, "
        f"1, 2, 3, 'kW', 'm@0', {T0})"
    )
    ch_backend.command(
        f"INSERT INTO `{database}`.anomalies (event_id, entity_id, entity_kind, ts, score, "
        f"severity, explanation, detected_at) VALUES ('e', 'm-9', 'meter', {T0}, 0.9, "
        f"'critical', '[{{\"feature\":\"kw\"}}]', {T0})"
    )
    sink = ClickHouseSink(ch_backend, database)
    assert sink.schema_version() == 1
    with pytest.raises(SchemaMismatch):
        sink.check_schema()  # readings, drift_events missing: version 1 is not what we write

    assert sink.ensure_schema() == LATEST_VERSION == 6
    assert sink.schema_version() == 6
    sink.check_schema()
    assert _scalar(ch_backend, f"SELECT count() FROM `{database}`.forecasts") == 1
    assert sink.query(f"SELECT kind, anomalies FROM `{database}`.anomaly_counts_daily").rows == [
        ("kw", 1)
    ]
    for table in ("forecasts", "anomalies", "dead_letters", "readings", "drift_events"):
        assert "non_replicated_deduplication_window = 1000" in _engine_full(
            ch_backend, database, table
        ), table
    for table in ("forecasts", "anomalies", "readings", "drift_events"):
        assert "ttl_only_drop_parts = 1" in _engine_full(ch_backend, database, table), table
    indexes = sink.query(
        f"SELECT name FROM system.data_skipping_indices WHERE database = '{database}'"
    ).rows
    assert indexes == []  # version 2's set(3) on severity skipped nothing; version 3 drops it
    types = sink.query(
        f"SELECT DISTINCT type FROM system.columns WHERE database = '{database}' "
        "AND name = 'entity_id'"
    ).rows
    assert types == [("String",)]
    assert sink.query(f"SELECT entity_id FROM `{database}`.forecasts").rows == [("m-9",)]
    # the old rows are deduplicated against new writes like any others
    sink.write(_batch(3), [], [], now_ms=T0)
    sink.write(_batch(3), [], [], now_ms=T0 + 1)
    assert _scalar(ch_backend, f"SELECT count() FROM `{database}`.forecasts") == 4
    # and a fresh database ends in the same shape as the migrated one
    fresh = ClickHouseSink(ch_backend, database + "_fresh")
    try:
        fresh.ensure_schema()
        shape = "SELECT name, engine_full FROM system.tables WHERE database = '{}' ORDER BY name"
        migrated = sink.query(shape.format(database)).rows
        created = fresh.query(shape.format(database + "_fresh")).rows
        assert migrated == created
    finally:
        ch_backend.command(f"DROP DATABASE IF EXISTS `{database}_fresh`")


def test_retention_follows_the_configuration(ch_backend: ClickHouseBackend, database: str) -> None:
    keep = Retention(readings_days=90, forecasts_days=30, dead_letters_days=7)
    sink = ClickHouseSink(ch_backend, database, retention=keep)
    sink.ensure_schema()
    assert "TTL ts + toIntervalDay(90)" in _engine_full(ch_backend, database, "readings")
    assert "TTL issued_at + toIntervalDay(30)" in _engine_full(ch_backend, database, "forecasts")
    assert "TTL dead_lettered_at + toIntervalDay(7)" in _engine_full(
        ch_backend, database, "dead_letters"
    )
    assert "TTL" not in _engine_full(ch_backend, database, "anomalies")  # 0 keeps forever
    assert (
        sink.apply_retention()["forecasts"] == "issued_at + toIntervalDay(30)"
    )  # unchanged: no ALTER
    # Changed by configuration: shorter, and forever.
    ClickHouseSink(ch_backend, database, retention=Retention(forecasts_days=1)).ensure_schema()
    assert "TTL issued_at + toIntervalDay(1)" in _engine_full(ch_backend, database, "forecasts")
    assert "TTL" not in _engine_full(ch_backend, database, "readings")
    # and it deletes: a forecast issued long ago goes at the next TTL merge
    sink = ClickHouseSink(ch_backend, database, retention=Retention(forecasts_days=1))
    sink.write(_batch(2, t0=T0), [], [], now_ms=T0)
    ch_backend.command(f"OPTIMIZE TABLE `{database}`.forecasts FINAL")
    assert _scalar(ch_backend, f"SELECT count() FROM `{database}`.forecasts") == 0


def test_retention_days_must_be_whole_and_not_negative() -> None:
    with pytest.raises(SinkConfigError, match="readings_days"):
        Retention(readings_days=-1)


def test_a_table_where_a_view_belongs_is_never_replaced(
    ch_backend: ClickHouseBackend, database: str
) -> None:
    ch_backend.command(f"CREATE DATABASE `{database}`")
    ch_backend.command(
        f"CREATE TABLE `{database}`.load_hourly (x UInt8) ENGINE = MergeTree ORDER BY x"
    )
    ch_backend.command(f"INSERT INTO `{database}`.load_hourly VALUES (42)")
    sink = ClickHouseSink(ch_backend, database)
    with pytest.raises(SchemaMismatch) as err:
        sink.ensure_schema()
    assert err.value.table == "load_hourly"
    assert "is a MergeTree where gridstream keeps a view" in str(err.value)
    assert _scalar(ch_backend, f"SELECT x FROM `{database}`.load_hourly") == 42  # data intact


def test_views_are_recreated_from_the_code_at_every_start(
    ch_backend: ClickHouseBackend, database: str
) -> None:
    sink = ClickHouseSink(ch_backend, database)
    sink.ensure_schema()
    ch_backend.command(f"CREATE OR REPLACE VIEW `{database}`.load_daily AS SELECT 1 AS stale")
    sink.ensure_schema()
    names = sink.query(
        f"SELECT name, engine, comment FROM system.tables WHERE database = '{database}' "
        "AND engine = 'View' ORDER BY name"
    ).rows
    assert [n for n, _, _ in names] == sorted(v.name for v in ALL_VIEWS)
    assert all(comment for _, _, comment in names)  # each says what it answers
    cols = sink.query(f"SELECT * FROM `{database}`.load_daily LIMIT 0").column_names
    assert "p95_load" in cols
