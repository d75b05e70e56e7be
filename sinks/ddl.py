"""ClickHouse tables of gridstream, as data: one ordered list of migrations, same SQL everywhere.

The same statements run on embedded chDB and on a ClickHouse server. Every statement must be
idempotent (``IF NOT EXISTS``), because a process that dies halfway through a migration runs it
again on the next start; ``schema_migrations`` records a version only after its statements ran and
the resulting tables were checked. Views (``sinks.views``) and retention TTLs are not versioned:
they are applied at every start, from the code and the configuration.

Keys follow how analysts ask: by entity and time range (every sorting key starts with
``entity_kind, entity_id`` and ends in time, so "feeders", "feeder f-7" and "f-7 last week" read
a key range). No skip index: a ``set`` index on ``anomalies.severity`` skipped almost nothing
(every block of granules holds all three severities) and was dropped in version 3. Times are
``DateTime64(3, 'UTC')``; entity ids ``String`` (a utility has millions: far past what
``LowCardinality`` is for), kinds, units and names ``LowCardinality``; regular time columns
``DoubleDelta`` and gauges ``Gorilla``, both under ZSTD. Partitioned tables set
``ttl_only_drop_parts``: retention drops whole monthly parts instead of rewriting them.

Idempotent writes, twice over:

1. Every table is a ``ReplacingMergeTree`` whose sorting key is the record's natural key, so a
   replayed batch collapses to one row per key, the newest processing stamp winning:
   ``readings`` (entity_kind, entity_id, ts) by ``written_at``; ``forecasts`` (entity_kind,
   entity_id, horizon_s, issued_at) by ``written_at``; ``anomalies`` (entity_kind, entity_id, ts,
   event_id) by ``detected_at``; ``drift_events`` (entity_kind, entity_id, detector, ts) by
   ``detected_at``; ``dead_letters`` (source_topic, source_partition, source_offset) by
   ``dead_lettered_at``. Replacement happens in background merges, so a query that counts must
   collapse copies itself: ``FROM t FINAL`` or ``argMax(x, written_at) ... GROUP BY <key>``; every
   view in ``sinks.views`` does.
2. Every insert carries an ``insert_deduplication_token`` (a hash of the rows without their
   processing stamp), and every table keeps ``non_replicated_deduplication_window`` tokens, so
   the same batch written again (a crash between insert and offset commit, a retry after a lost
   acknowledgement) is dropped by the engine before it becomes a second part.

Partition keys are functions of a sorting-key column, so copies of one key always meet in one
partition; ``dead_letters`` has no time in its key and is not partitioned.

Non-finite values are stored as given (NaN and ±inf are Float64 values; NULL would blur "no
value" and "not written"): a forecast model that cannot forecast emits NaN, and the views filter
with ``isFinite``. Optional reading channels that were absent are NULL.

To change the schema, append a ``Migration`` (e.g. ``ALTER TABLE {db}.t ADD COLUMN IF NOT
EXISTS``) and update the ``Table`` to the resulting shape; never edit a released migration — that
is why version 1 is kept as the literal text it was released with.
"""

from __future__ import annotations

import re
from dataclasses import replace

from sinks.ddl_balance import ENERGY_BALANCE
from sinks.ddl_errors import FORECAST_ERRORS, FORECAST_MAPE_AGG
from sinks.ddl_errors import STATEMENTS as _ERRORS_V6
from sinks.ddl_types import (  # noqa: F401 - re-exported: the schema is written in these
    _DDL_HEAD,
    _IDENTIFIER,
    _PLAIN_ENGINE,
    DB,
    DEDUP_WINDOW,
    DEFAULT_DATABASE,
    Column,
    Migration,
    Retention,
    Table,
    quote_cluster,
    quote_database,
    render,
)
from sinks.exceptions import SinkConfigError

_TS = "DateTime64(3, 'UTC')"
_LC = "LowCardinality(String)"
_TS_CODEC = "DoubleDelta, ZSTD"
_FLOAT_CODEC = "Gorilla, ZSTD"
_CHANNEL = "Nullable(Float64)"
# Monthly partitions expire whole: retention drops parts instead of rewriting them row by row.
_DROP_PARTS = "ttl_only_drop_parts = 1"

READINGS = Table(
    name="readings",
    columns=(
        Column("entity_id", "String"),  # millions of meters: not LowCardinality
        Column("entity_kind", _LC),
        Column("ts", _TS, _TS_CODEC),
        Column("value", "Float64", _FLOAT_CODEC),  # active power: kW (meters) / MW (SCADA)
        Column("unit", _LC),
        Column("reactive", _CHANNEL, _FLOAT_CODEC),  # kvar / Mvar
        Column("voltage", _CHANNEL, _FLOAT_CODEC),  # V (meters) / kV (SCADA)
        Column("current", _CHANNEL, _FLOAT_CODEC),  # A
        Column("frequency", _CHANNEL, _FLOAT_CODEC),  # Hz
        Column("temperature", _CHANNEL, _FLOAT_CODEC),  # °C
        Column("quality", "LowCardinality(Nullable(String))"),
        Column("written_at", _TS),
    ),
    engine="ReplacingMergeTree(written_at)",
    order_by=("entity_kind", "entity_id", "ts"),
    partition_by="toYYYYMM(ts)",
    ttl_column="ts",
    settings=(_DROP_PARTS,),
)

FORECASTS = Table(
    name="forecasts",
    columns=(
        Column("entity_id", "String"),  # millions of meters: not LowCardinality
        Column("entity_kind", _LC),
        Column("issued_at", _TS, _TS_CODEC),
        Column("horizon_s", "UInt32"),
        Column("target_ts", _TS, _TS_CODEC),
        Column("p10", "Float64", _FLOAT_CODEC),
        Column("p50", "Float64", _FLOAT_CODEC),
        Column("p90", "Float64", _FLOAT_CODEC),
        Column("unit", _LC),
        Column("model", _LC),
        Column("written_at", _TS),
    ),
    engine="ReplacingMergeTree(written_at)",
    order_by=("entity_kind", "entity_id", "horizon_s", "issued_at"),
    partition_by="toYYYYMM(issued_at)",
    ttl_column="issued_at",
    settings=(_DROP_PARTS,),
)

ANOMALIES = Table(
    name="anomalies",
    columns=(
        Column("event_id", "String"),
        Column("entity_id", "String"),  # millions of meters: not LowCardinality
        Column("entity_kind", _LC),
        Column("ts", _TS),
        Column("score", "Float64"),
        Column("severity", _LC),
        Column("detectors", f"Map({_LC}, Float64)"),
        Column("fired", f"Array({_LC})"),
        Column("explanation", "String"),  # JSON list of {feature, value, expected, deviation}
        Column("reading", "String"),  # JSON object: the reading's fields
        Column("model_versions", f"Map({_LC}, String)"),
        Column("detected_at", _TS),
    ),
    engine="ReplacingMergeTree(detected_at)",
    order_by=("entity_kind", "entity_id", "ts", "event_id"),
    partition_by="toYYYYMM(ts)",
    ttl_column="ts",
    settings=(_DROP_PARTS,),
)

DRIFT_EVENTS = Table(
    name="drift_events",
    columns=(
        Column("entity_id", "String"),  # millions of meters: not LowCardinality
        Column("entity_kind", _LC),
        Column("ts", _TS),  # the reading time the drift was detected at
        Column("detector", _LC),  # e.g. "psi", "adwin", "page_hinkley"
        Column("statistic", "Float64"),  # the detector's test statistic
        Column("detail", "String"),  # JSON object: windows, thresholds, features
        Column("detected_at", _TS),
    ),
    engine="ReplacingMergeTree(detected_at)",
    order_by=("entity_kind", "entity_id", "detector", "ts"),
    partition_by="toYYYYMM(ts)",
    ttl_column="ts",
    settings=(_DROP_PARTS,),
)

DEAD_LETTERS = Table(
    name="dead_letters",
    columns=(
        Column("source_topic", _LC),
        Column("source_partition", "Int32"),
        Column("source_offset", "Int64"),
        Column("key", "Nullable(String)"),
        Column("raw", "String"),  # the original bytes; ClickHouse String is binary-safe
        Column("error_class", _LC),
        Column("error", "String"),
        Column("dead_lettered_at", _TS),
    ),
    engine="ReplacingMergeTree(dead_lettered_at)",
    order_by=("source_topic", "source_partition", "source_offset"),
    ttl_column="dead_lettered_at",
)

# Rollups, filled by materialized views as rows are inserted, and read by the analyst views.
# Their aggregate states are idempotent, so a replayed batch cannot double them, whatever its
# batching and whether or not its insert token caught it: a set of (ts, value) points per entity
# and hour (the processor never lets two values of one reading time into ``readings``: an exact
# redelivery is dropped, another value is a dead letter), and sets of event ids and entities per
# day, severity and kind. Sums and counts are computed from the sets when queried.
_POINTS = f"AggregateFunction(groupUniqArray, Tuple({_TS}, Float64))"

LOAD_HOURLY_AGG = Table(
    name="load_hourly_agg",
    columns=(
        Column("entity_kind", _LC),
        Column("entity_id", "String"),
        Column("hour", "DateTime('UTC')"),
        Column("unit", _LC),
        Column("points", _POINTS),
    ),
    engine="AggregatingMergeTree",
    order_by=("entity_kind", "entity_id", "hour", "unit"),
    partition_by="toYYYYMM(hour)",
    dedup_window=0,
)

ANOMALY_COUNTS_AGG = Table(
    name="anomaly_counts_agg",
    columns=(
        Column("day", "Date"),
        Column("severity", _LC),
        Column("kind", "String"),
        Column("events", "AggregateFunction(uniqExact, String)"),
        Column("entities", "AggregateFunction(uniqExact, String)"),
        Column("max_score", "SimpleAggregateFunction(max, Float64)"),
    ),
    engine="AggregatingMergeTree",
    order_by=("day", "severity", "kind"),
    partition_by="toYYYYMM(day)",
    dedup_window=0,
)

# The top explanation feature of an anomaly (``sinks.views`` names it "kind").
ANOMALY_KIND = (
    "if(JSONLength(explanation) > 0, JSONExtractString(explanation, 1, 'feature'), 'unexplained')"
)
_LOAD_ROLLUP_SELECT = (
    "SELECT entity_kind, entity_id, toStartOfHour(ts) AS hour, unit, "
    "groupUniqArrayState((ts, value)) AS points FROM {src} WHERE isFinite(value) "
    "GROUP BY entity_kind, entity_id, hour, unit"
)
_ANOMALY_ROLLUP_SELECT = (
    f"SELECT toDate(ts) AS day, severity, {ANOMALY_KIND} AS kind, "
    "uniqExactState(event_id) AS events, "
    "uniqExactState(concat(entity_kind, '/', entity_id)) AS entities, max(score) AS max_score "
    "FROM {src} GROUP BY day, severity, kind"
)


def _rollup(table: Table, select: str, source: str) -> tuple[str, ...]:
    """The rollup table, its materialized view, and a backfill from what the source holds
    (idempotent like the states: running the migration again adds nothing)."""
    mv = f"{table.name}_mv"
    return (
        table.create_sql(),
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DB}.`{mv}` TO {DB}.`{table.name}` AS "
        + select.format(src=f"{DB}.`{source}`"),
        f"INSERT INTO {DB}.`{table.name}` " + select.format(src=f"{DB}.`{source}` FINAL"),
    )


# Bookkeeping, created before any migration so the current version can be read.
SCHEMA_MIGRATIONS = Table(
    name="schema_migrations",
    columns=(
        Column("version", "UInt32"),
        Column("description", "String"),
        Column("applied_at", _TS),
    ),
    engine="ReplacingMergeTree(applied_at)",
    order_by=("version",),
    dedup_window=0,
)

# Exactly as released: bootstrap and version 1 must create what they always created.
_SCHEMA_MIGRATIONS_V1 = (
    "CREATE TABLE IF NOT EXISTS {db}.`schema_migrations` (\n    `version` UInt32,\n"
    "    `description` String,\n    `applied_at` DateTime64(3, 'UTC')\n)\n"
    "ENGINE = ReplacingMergeTree(applied_at)\nORDER BY version"
)
_V1: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS {db}.`forecasts` (\n    `entity_id` LowCardinality(String),\n"
    "    `entity_kind` LowCardinality(String),\n"
    "    `issued_at` DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD),\n    `horizon_s` UInt32,\n"
    "    `target_ts` DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD),\n"
    "    `p10` Float64 CODEC(Gorilla, ZSTD),\n    `p50` Float64 CODEC(Gorilla, ZSTD),\n"
    "    `p90` Float64 CODEC(Gorilla, ZSTD),\n    `unit` LowCardinality(String),\n"
    "    `model` LowCardinality(String),\n    `written_at` DateTime64(3, 'UTC')\n)\n"
    "ENGINE = ReplacingMergeTree(written_at)\nPARTITION BY toYYYYMM(issued_at)\n"
    "ORDER BY (entity_kind, entity_id, horizon_s, issued_at)",
    "CREATE TABLE IF NOT EXISTS {db}.`anomalies` (\n    `event_id` String,\n"
    "    `entity_id` LowCardinality(String),\n    `entity_kind` LowCardinality(String),\n"
    "    `ts` DateTime64(3, 'UTC'),\n    `score` Float64,\n    `severity` LowCardinality(String),\n"
    "    `detectors` Map(LowCardinality(String), Float64),\n"
    "    `fired` Array(LowCardinality(String)),\n    `explanation` String,\n"
    "    `reading` String,\n    `model_versions` Map(LowCardinality(String), String),\n"
    "    `detected_at` DateTime64(3, 'UTC')\n)\nENGINE = ReplacingMergeTree(detected_at)\n"
    "PARTITION BY toYYYYMM(ts)\nORDER BY (entity_kind, entity_id, ts, event_id)",
    "CREATE TABLE IF NOT EXISTS {db}.`dead_letters` (\n    `source_topic` LowCardinality(String),\n"
    "    `source_partition` Int32,\n    `source_offset` Int64,\n    `key` Nullable(String),\n"
    "    `raw` String,\n    `error_class` LowCardinality(String),\n    `error` String,\n"
    "    `dead_lettered_at` DateTime64(3, 'UTC')\n)\n"
    "ENGINE = ReplacingMergeTree(dead_lettered_at)\n"
    "ORDER BY (source_topic, source_partition, source_offset)",
)


def _dedup_window(table: Table) -> str:
    return (
        f"ALTER TABLE {DB}.`{table.name}` "
        f"MODIFY SETTING non_replicated_deduplication_window = {table.dedup_window}"
    )


# Version 2 as released: LowCardinality entity ids, a set(3) index on anomalies.severity (it
# skipped almost nothing: every block of granules holds all three severities).
_SEVERITY_INDEX_V2 = "idx_severity severity TYPE set(3) GRANULARITY 4"


def _as_released_in_v2(table: Table) -> Table:
    columns = tuple(replace(c, type=_LC) if c.name == "entity_id" else c for c in table.columns)
    return replace(table, columns=columns, settings=())


BOOTSTRAP: tuple[str, ...] = (f"CREATE DATABASE IF NOT EXISTS {DB}", _SCHEMA_MIGRATIONS_V1)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(version=1, description="forecasts, anomalies, dead_letters", statements=_V1),
    Migration(
        version=2,
        description=(
            "readings, drift_events; insert deduplication windows; anomalies severity index"
        ),
        statements=(
            _as_released_in_v2(READINGS).create_sql(),
            _as_released_in_v2(DRIFT_EVENTS).create_sql(),
            _dedup_window(FORECASTS),
            _dedup_window(ANOMALIES),
            _dedup_window(DEAD_LETTERS),
            f"ALTER TABLE {DB}.`anomalies` ADD INDEX IF NOT EXISTS {_SEVERITY_INDEX_V2}",
        ),
    ),
    Migration(
        version=3,
        description=(
            "String entity ids; no severity skip index; partitions expire whole "
            "(ttl_only_drop_parts)"
        ),
        statements=(
            *(
                f"ALTER TABLE {DB}.`{t.name}` MODIFY COLUMN `entity_id` String"
                for t in (READINGS, FORECASTS, ANOMALIES, DRIFT_EVENTS)
            ),
            f"ALTER TABLE {DB}.`anomalies` DROP INDEX IF EXISTS idx_severity",
            *(
                f"ALTER TABLE {DB}.`{t.name}` MODIFY SETTING {_DROP_PARTS}"
                for t in (READINGS, FORECASTS, ANOMALIES, DRIFT_EVENTS)
            ),
        ),
    ),
    Migration(
        version=4,
        description="rollups: load per entity and hour, anomaly counts per day (by views)",
        statements=(
            *_rollup(LOAD_HOURLY_AGG, _LOAD_ROLLUP_SELECT, READINGS.name),
            *_rollup(ANOMALY_COUNTS_AGG, _ANOMALY_ROLLUP_SELECT, ANOMALIES.name),
        ),
    ),
    Migration(5, "energy_balance per parent and interval", (ENERGY_BALANCE.create_sql(),)),
    Migration(6, "forecast_errors as matched, MAPE rollup per hour, kind and horizon", _ERRORS_V6),
)

LATEST_VERSION = MIGRATIONS[-1].version

# The tables rows are written to, in the order ``ClickHouseSink.write`` inserts them.
DATA_TABLES: tuple[Table, ...] = (READINGS, FORECASTS, ANOMALIES, DRIFT_EVENTS, DEAD_LETTERS)

# The shape every table has after the latest migration; the sink checks it at start.
ROLLUP_TABLES: tuple[Table, ...] = (LOAD_HOURLY_AGG, ANOMALY_COUNTS_AGG, FORECAST_MAPE_AGG)
EXPECTED_TABLES: dict[str, Table] = {
    t.name: t
    for t in (*DATA_TABLES, *ROLLUP_TABLES, ENERGY_BALANCE, FORECAST_ERRORS, SCHEMA_MIGRATIONS)
}


def ttl_expression(table: Table, days: int) -> str | None:
    """The TTL a retention of ``days`` gives ``table``, as ClickHouse prints it back."""
    if not days:
        return None
    if table.ttl_column is None:
        raise SinkConfigError(f"table {table.name} has no retention column")
    return f"{table.ttl_column} + toIntervalDay({days})"


_TTL = re.compile(r"\bTTL\s+(.*?)(?:\s+SETTINGS\s|$)", re.S)


def current_ttl(engine_full: str) -> str | None:
    """The table TTL in ``system.tables.engine_full``, or None."""
    match = _TTL.search(engine_full)
    return match.group(1).strip() if match else None


def _check_order() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != sorted(set(versions)) or versions[0] < 1:
        raise AssertionError(f"migrations must have increasing versions >= 1, got {versions}")


_check_order()
