"""ClickHouse tables of gridstream, as data: one ordered list of migrations, same SQL everywhere.

The same statements run on embedded chDB and on a ClickHouse server. Every statement must be
idempotent (``IF NOT EXISTS``), because a process that dies halfway through a migration runs it
again on the next start; ``schema_migrations`` records a version only after its statements ran and
the resulting tables were checked.

Idempotent writes, and how to count. Every table is a ``ReplacingMergeTree`` whose sorting key is
the record's natural key, so a replayed batch (at-least-once delivery) collapses to one row:

- ``forecasts``: (entity_kind, entity_id, horizon_s, issued_at); the newest ``written_at`` wins.
- ``anomalies``: (entity_kind, entity_id, ts, event_id); the newest ``detected_at`` wins.
- ``dead_letters``: (source_topic, source_partition, source_offset); newest ``dead_lettered_at``.

Replacement happens in background merges, at an unknown time. A query that counts or sums must
therefore collapse duplicates itself: ``SELECT count() FROM gridstream.forecasts FINAL``, or
``argMax(p50, written_at) ... GROUP BY entity_kind, entity_id, horizon_s, issued_at``. Partition
keys are functions of a sorting-key column (``toYYYYMM(issued_at)``, ``toYYYYMM(ts)``), so copies
of one key always land in one partition and merges can collapse them; ``dead_letters`` has no time
in its key and is not partitioned.

Non-finite quantiles. ``p10``/``p50``/``p90`` are stored as given, NaN and ±inf included (Float64
holds them, and NULL would hide the difference between "no forecast" and "not written"). A model
that cannot forecast emits NaN; analysts filter with ``isFinite(p50)``.

To change the schema, append a ``Migration`` (e.g. ``ALTER TABLE {db}.t ADD COLUMN IF NOT EXISTS``)
and update ``EXPECTED_TABLES`` to the resulting shape; never edit a released migration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sinks.exceptions import SinkConfigError

DEFAULT_DATABASE = "gridstream"
DB = "{db}"  # placeholder in statements, replaced by the quoted database name

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def quote_database(name: str) -> str:
    """The database name, back-quoted; only plain identifiers, so it can never inject SQL."""
    if not _IDENTIFIER.match(name):
        raise SinkConfigError(
            f"invalid ClickHouse database name {name!r}: use letters, digits and '_', "
            "not starting with a digit"
        )
    return f"`{name}`"


def render(statement: str, database: str) -> str:
    """A statement with ``{db}`` replaced by the quoted database name."""
    return statement.replace(DB, quote_database(database))


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # as system.columns reports it, so the schema check can compare strings
    codec: str = ""

    def sql(self) -> str:
        codec = f" CODEC({self.codec})" if self.codec else ""
        return f"`{self.name}` {self.type}{codec}"


@dataclass(frozen=True, slots=True)
class Table:
    """A table's shape: what ``CREATE TABLE`` makes and what the schema check expects."""

    name: str
    columns: tuple[Column, ...]
    engine: str  # with arguments, e.g. "ReplacingMergeTree(written_at)"
    order_by: tuple[str, ...]
    partition_by: str | None = None

    @property
    def engine_name(self) -> str:
        return self.engine.split("(", 1)[0]

    @property
    def sorting_key(self) -> str:
        """The sorting key as ``system.tables.sorting_key`` shows it."""
        return ", ".join(self.order_by)

    def column_types(self) -> dict[str, str]:
        return {c.name: c.type for c in self.columns}

    def create_sql(self) -> str:
        cols = ",\n    ".join(c.sql() for c in self.columns)
        partition = f"\nPARTITION BY {self.partition_by}" if self.partition_by else ""
        # One column without parentheses: ClickHouse would report "(version)" as the sorting key.
        key = self.sorting_key if len(self.order_by) == 1 else f"({self.sorting_key})"
        return (
            f"CREATE TABLE IF NOT EXISTS {DB}.`{self.name}` (\n    {cols}\n)\n"
            f"ENGINE = {self.engine}{partition}\nORDER BY {key}"
        )


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: idempotent statements with ``{db}`` placeholders, applied in order."""

    version: int
    description: str
    statements: tuple[str, ...]


_TS = "DateTime64(3, 'UTC')"
_LC = "LowCardinality(String)"
_TS_CODEC = "DoubleDelta, ZSTD"
_FLOAT_CODEC = "Gorilla, ZSTD"

FORECASTS = Table(
    name="forecasts",
    columns=(
        Column("entity_id", _LC),
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
)

ANOMALIES = Table(
    name="anomalies",
    columns=(
        Column("event_id", "String"),
        Column("entity_id", _LC),
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
)

BOOTSTRAP: tuple[str, ...] = (
    f"CREATE DATABASE IF NOT EXISTS {DB}",
    SCHEMA_MIGRATIONS.create_sql(),
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="forecasts, anomalies, dead_letters",
        statements=(FORECASTS.create_sql(), ANOMALIES.create_sql(), DEAD_LETTERS.create_sql()),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

# The shape every table has after the latest migration; the sink checks it at start.
EXPECTED_TABLES: dict[str, Table] = {
    t.name: t for t in (FORECASTS, ANOMALIES, DEAD_LETTERS, SCHEMA_MIGRATIONS)
}


def _check_order() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != sorted(set(versions)) or versions[0] < 1:
        raise AssertionError(f"migrations must have increasing versions >= 1, got {versions}")


_check_order()
