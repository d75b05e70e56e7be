"""The ClickHouse sink: schema at start, one columnar insert per table and batch, SQL passthrough.

Writes are idempotent rather than atomic: ``write`` inserts forecasts, then anomalies, then dead
letters, and a failure part-way leaves the earlier tables written. The runtime retries the whole
batch (offsets stay uncommitted); the ReplacingMergeTree keys of ``sinks.ddl`` collapse the copies,
so analysts who count with ``FINAL`` (or GROUP BY the key) see each record once.

Forecasts go from the batch's numpy columns straight to Arrow (no Python object per row);
anomalies and dead letters are rare and are converted per record.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import numpy as np
import orjson
import pyarrow as pa

from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch, unit_of
from sinks.clickhouse_backend import ClickHouseBackend, QueryResult
from sinks.ddl import (
    ANOMALIES,
    BOOTSTRAP,
    DEAD_LETTERS,
    DEFAULT_DATABASE,
    EXPECTED_TABLES,
    FORECASTS,
    LATEST_VERSION,
    MIGRATIONS,
    SCHEMA_MIGRATIONS,
    Table,
    quote_database,
    render,
)
from sinks.exceptions import SchemaMismatch, SinkError
from sinks.table_format import format_table

__all__ = [
    "ClickHouseSink",
    "QueryResult",
    "anomalies_table",
    "dead_letters_table",
    "forecasts_table",
    "format_table",
]

log = logging.getLogger(__name__)

TS = pa.timestamp("ms", tz="UTC")
_STR = pa.string()
_F64 = pa.float64()


# ------------------------------------------------------------------------ records to Arrow tables


def _table(spec: Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Columns in the table's order; a mismatch with the DDL is a bug caught here, not in SQL."""
    names = [c.name for c in spec.columns]
    if list(columns) != names:
        raise AssertionError(f"{spec.name}: columns {list(columns)} != {names}")
    return pa.table(columns)


def forecasts_table(batch: ForecastBatch, now_ms: int) -> pa.Table:
    """The ``forecasts`` rows of a batch; NaN/inf quantiles are kept as values (see sinks.ddl)."""
    n = len(batch)
    kind = pa.array(batch.kind, type=_STR)
    kinds = kind.dictionary_encode()  # unit_of once per distinct kind, not once per row
    unit = pa.array([unit_of(k) for k in kinds.dictionary.to_pylist()], type=_STR)
    return _table(
        FORECASTS,
        {
            "entity_id": pa.array(batch.entity, type=_STR),
            "entity_kind": kind,
            "issued_at": pa.array(np.asarray(batch.issued_ms, dtype=np.int64), type=TS),
            "horizon_s": pa.array(np.asarray(batch.horizon_s, dtype=np.int64)).cast(pa.uint32()),
            "target_ts": pa.array(np.asarray(batch.target_ms, dtype=np.int64), type=TS),
            "p10": pa.array(np.asarray(batch.p10, dtype=np.float64), type=_F64),
            "p50": pa.array(np.asarray(batch.p50, dtype=np.float64), type=_F64),
            "p90": pa.array(np.asarray(batch.p90, dtype=np.float64), type=_F64),
            "unit": unit.take(kinds.indices),
            "model": pa.repeat(pa.scalar(batch.model, type=_STR), n),
            "written_at": pa.repeat(pa.scalar(now_ms, type=TS), n),
        },
    )


def _json(value: object) -> str:
    # orjson writes NaN/inf as null: the JSON stays valid for ClickHouse's JSON functions.
    return orjson.dumps(value).decode()


def anomalies_table(records: Sequence[AnomalyRecord]) -> pa.Table:
    """The ``anomalies`` rows; explanation and reading are JSON text."""
    return _table(
        ANOMALIES,
        {
            "event_id": pa.array([r.event_id for r in records], type=_STR),
            "entity_id": pa.array([r.entity_id for r in records], type=_STR),
            "entity_kind": pa.array([r.entity_kind for r in records], type=_STR),
            "ts": pa.array([r.ts_ms for r in records], type=pa.int64()).cast(TS),
            "score": pa.array([r.score for r in records], type=_F64),
            "severity": pa.array([r.severity for r in records], type=_STR),
            "detectors": pa.array(
                [list(r.detectors.items()) for r in records], type=pa.map_(_STR, _F64)
            ),
            "fired": pa.array([list(r.fired) for r in records], type=pa.list_(_STR)),
            "explanation": pa.array([_json(r.explanation) for r in records], type=_STR),
            "reading": pa.array([_json(r.reading) for r in records], type=_STR),
            "model_versions": pa.array(
                [list(r.model_versions.items()) for r in records], type=pa.map_(_STR, _STR)
            ),
            "detected_at": pa.array([r.detected_ms for r in records], type=pa.int64()).cast(TS),
        },
    )


def dead_letters_table(records: Sequence[DeadLetterRecord]) -> pa.Table:
    """The ``dead_letters`` rows; key and raw stay bytes (binary), whatever their encoding."""
    return _table(
        DEAD_LETTERS,
        {
            "source_topic": pa.array([r.source_topic for r in records], type=_STR),
            "source_partition": pa.array([r.source_partition for r in records], type=pa.int32()),
            "source_offset": pa.array([r.source_offset for r in records], type=pa.int64()),
            "key": pa.array([r.key for r in records], type=pa.binary()),
            "raw": pa.array([r.raw for r in records], type=pa.binary()),
            "error_class": pa.array([r.error_class for r in records], type=_STR),
            "error": pa.array([r.error for r in records], type=_STR),
            "dead_lettered_at": pa.array(
                [r.dead_lettered_ms for r in records], type=pa.int64()
            ).cast(TS),
        },
    )


# ------------------------------------------------------------------------------------- the sink


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _norm(text: str) -> str:
    return re.sub(r"[\s`]", "", text)


class ClickHouseSink:
    """Writes forecasts, anomalies and dead letters to one database of a ClickHouse backend.

    The sink does not own the backend: whoever created the backend closes it.
    """

    def __init__(self, backend: ClickHouseBackend, database: str = DEFAULT_DATABASE) -> None:
        quote_database(database)  # fail at construction on a bad name, not at the first write
        self.backend = backend
        self.database = database

    def __repr__(self) -> str:
        return f"ClickHouseSink({self.backend!r}, database={self.database!r})"

    # -- schema

    def schema_version(self) -> int:
        """The highest migration recorded in ``schema_migrations`` (0 if none)."""
        result = self.backend.query(
            render(f"SELECT max(version) FROM {{db}}.`{SCHEMA_MIGRATIONS.name}`", self.database)
        )
        return int(result.rows[0][0]) if result.rows else 0

    def ensure_schema(self) -> int:
        """Create or migrate the database and check every table's shape; returns the version.

        Safe to call on every start and from several processes: statements are idempotent and
        recording a version twice collapses in ``schema_migrations``.
        """
        for statement in BOOTSTRAP:
            self.backend.command(render(statement, self.database))
        current = self.schema_version()
        if current > LATEST_VERSION:
            log.warning(
                "database %s is at schema version %d, newer than this gridstream's %d; "
                "continuing if the tables it writes still match",
                self.database,
                current,
                LATEST_VERSION,
            )
        pending = [m for m in MIGRATIONS if m.version > current]
        for migration in pending:
            for statement in migration.statements:
                self.backend.command(render(statement, self.database))
        self.check_schema()
        for migration in pending:
            self.backend.command(
                render(
                    f"INSERT INTO {{db}}.`{SCHEMA_MIGRATIONS.name}` "
                    "(version, description, applied_at) VALUES "
                    f"({migration.version}, {_sql_string(migration.description)}, "
                    "now64(3, 'UTC'))",
                    self.database,
                )
            )
            log.info(
                "applied ClickHouse schema version %d to %s: %s",
                migration.version,
                self.database,
                migration.description,
            )
        return max(current, LATEST_VERSION)

    def check_schema(self) -> None:
        """Raise ``SchemaMismatch`` naming every table whose columns, engine or key differ."""
        db = _sql_string(self.database)
        tables = {
            name: (engine, key)
            for name, engine, key in self.backend.query(
                f"SELECT name, engine, sorting_key FROM system.tables WHERE database = {db}"
            ).rows
        }
        columns: dict[str, dict[str, str]] = {}
        for table, name, typ in self.backend.query(
            f"SELECT table, name, type FROM system.columns WHERE database = {db}"
        ).rows:
            columns.setdefault(table, {})[name] = typ
        problems: dict[str, list[str]] = {}
        for spec in EXPECTED_TABLES.values():
            found = _table_problems(spec, tables.get(spec.name), columns.get(spec.name, {}))
            if found:
                problems[spec.name] = found
        if problems:
            first = next(iter(problems))
            detail = "; ".join(
                f"table {self.database}.{t}: {', '.join(p)}" for t, p in problems.items()
            )
            raise SchemaMismatch(
                f"ClickHouse schema does not match what gridstream writes ({detail}); "
                "migrate or drop those tables, or use another database",
                table=first,
            )

    # -- writes and reads

    def write(
        self,
        forecasts: ForecastBatch,
        anomalies: Sequence[AnomalyRecord],
        dead_letters: Sequence[DeadLetterRecord],
        now_ms: int,
    ) -> None:
        """Insert one batch's outputs; empty inputs are skipped. ``now_ms`` stamps ``written_at``.

        Raises ``SinkError`` naming the table; ``error.retryable`` says whether to retry.
        """
        if len(forecasts):
            self._insert(FORECASTS, len(forecasts), lambda: forecasts_table(forecasts, now_ms))
        if anomalies:
            self._insert(ANOMALIES, len(anomalies), lambda: anomalies_table(anomalies))
        if dead_letters:
            self._insert(DEAD_LETTERS, len(dead_letters), lambda: dead_letters_table(dead_letters))

    def query(self, sql: str) -> QueryResult:
        """Run any SQL (for ``gridstream query``); ``SinkError`` if the engine rejects it."""
        return self.backend.query(sql)

    def _insert(self, spec: Table, n: int, build: Callable[[], pa.Table]) -> None:
        where = f"{self.database}.{spec.name}"
        try:
            data = build()
        except (pa.ArrowException, TypeError, ValueError) as exc:
            cause = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise SinkError(
                f"cannot convert {n} rows for {where}: {type(exc).__name__}: {cause}",
                table=spec.name,
            ) from exc
        try:
            self.backend.insert_arrow(self.database, spec.name, data)
        except SinkError as exc:
            raise type(exc)(
                f"insert of {n} rows into {where} failed: {exc}", table=spec.name
            ) from exc


def _table_problems(
    spec: Table, meta: tuple[str, str] | None, columns: dict[str, str]
) -> list[str]:
    if meta is None:
        return ["missing"]
    engine, key = meta
    problems = []
    if engine != spec.engine_name:
        problems.append(f"engine {engine}, expected {spec.engine_name}")
    if _norm(key) != _norm(spec.sorting_key):
        problems.append(f"ORDER BY ({key}), expected ({spec.sorting_key})")
    for name, typ in spec.column_types().items():
        if name not in columns:
            problems.append(f"column {name} missing (expected {typ})")
        elif _norm(columns[name]) != _norm(typ):
            problems.append(f"column {name} is {columns[name]}, expected {typ}")
    return problems
