"""The ClickHouse sink: schema at start, one columnar insert per table and batch, SQL passthrough.

Writes are idempotent rather than atomic: ``write`` inserts readings, forecasts, anomalies, then
dead letters, and a failure part-way leaves the earlier tables written. The runtime retries the
whole batch (offsets stay uncommitted); each insert carries a deduplication token, so the tables
already written drop the repeat, and the ReplacingMergeTree keys of ``sinks.ddl`` collapse any
copy that still gets through (a replay that batches differently), so analysts who count with
``FINAL`` — as every view does — see each record once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import pyarrow as pa

from schemas.balance import BalanceRows
from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch, ReadingBatch
from sinks.clickhouse_common import ClickHouseBackend, QueryResult
from sinks.ddl import (
    ANOMALIES,
    BOOTSTRAP,
    DATA_TABLES,
    DEAD_LETTERS,
    DEFAULT_DATABASE,
    DRIFT_EVENTS,
    EXPECTED_TABLES,
    FORECASTS,
    LATEST_VERSION,
    MIGRATIONS,
    READINGS,
    SCHEMA_MIGRATIONS,
    Retention,
    Table,
    current_ttl,
    quote_cluster,
    quote_database,
    render,
    ttl_expression,
)
from sinks.ddl_balance import ENERGY_BALANCE
from sinks.ddl_errors import FORECAST_ERRORS
from sinks.exceptions import SchemaMismatch, SinkError
from sinks.rows import (
    DriftEventLike,
    anomalies_table,
    dead_letters_table,
    dedup_token,
    drift_events_table,
    forecasts_table,
    readings_table,
)
from sinks.rows_balance import energy_balance_table
from sinks.rows_errors import MatchesLike, forecast_errors_table
from sinks.table_format import format_table
from sinks.views import ALL_VIEWS

__all__ = [
    "ClickHouseSink",
    "QueryResult",
    "anomalies_table",
    "dead_letters_table",
    "forecasts_table",
    "format_table",
    "readings_table",
]

log = logging.getLogger(__name__)


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _norm(text: str | None) -> str:
    return re.sub(r"[\s`]", "", text or "")


class ClickHouseSink:
    """Writes gridstream's outputs to one database of a ClickHouse backend.

    ``retention`` sets the tables' TTLs at ``ensure_schema``; with ``store_readings=False`` the
    readings passed to ``write`` are ignored (the load and accuracy views then stay empty).
    With ``cluster``, every DDL statement runs ``ON CLUSTER`` with replicated engines.

    Privileges: ``ensure_schema`` (``gridstream migrate``) needs CREATE, ALTER, DROP VIEW, INSERT
    and SELECT on the database; ``verify_schema`` and ``write`` (``run --no-migrate``) need only
    INSERT on its tables (system tables show what a user has any grant on).
    The sink does not own the backend: whoever created the backend closes it.
    """

    def __init__(
        self,
        backend: ClickHouseBackend,
        database: str = DEFAULT_DATABASE,
        *,
        retention: Retention | None = None,
        store_readings: bool = True,
        cluster: str | None = None,
    ) -> None:
        quote_database(database)  # fail at construction on a bad name, not at the first write
        if cluster is not None:
            quote_cluster(cluster)
        self.backend = backend
        self.database = database
        self.retention = retention or Retention()
        self.store_readings = store_readings
        self.cluster = cluster

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
        """Create or migrate the database, check it, (re)create the views, apply retention.

        Returns the schema version. Safe to call on every start and from several processes:
        statements are idempotent and recording a version twice collapses in
        ``schema_migrations``.
        """
        for statement in BOOTSTRAP:
            self._ddl(statement)
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
                self._ddl(statement)
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
        for view in ALL_VIEWS:
            self._ddl(view.create_sql())
        self.apply_retention()
        return max(current, LATEST_VERSION)

    def verify_schema(self) -> None:
        """Check, without changing anything, that the tables are what ``write`` inserts into:
        the start of ``gridstream run --no-migrate``, for a user that may only INSERT.
        ``SchemaMismatch`` names what differs; run ``gridstream migrate`` as an owner first."""
        self.check_schema()

    def _ddl(self, statement: str) -> None:
        self.backend.command(render(statement, self.database, self.cluster))

    def _tables(self) -> dict[str, tuple[str, str, str]]:
        """name -> (engine, sorting key, engine_full) of every table and view in the database."""
        db = _sql_string(self.database)
        return {
            name: (engine, key, full)
            for name, engine, key, full in self.backend.query(
                "SELECT name, engine, sorting_key, engine_full FROM system.tables "
                f"WHERE database = {db}"
            ).rows
        }

    def check_schema(self) -> None:
        """Raise ``SchemaMismatch`` naming every table whose columns, engine or key differ,
        and every object that sits where a view belongs (replacing it would destroy it)."""
        tables = self._tables()
        columns: dict[str, dict[str, str]] = {}
        for table, name, typ in self.backend.query(
            "SELECT table, name, type FROM system.columns "
            f"WHERE database = {_sql_string(self.database)}"
        ).rows:
            columns.setdefault(table, {})[name] = typ
        problems: dict[str, list[str]] = {}
        for spec in EXPECTED_TABLES.values():
            meta = tables.get(spec.name)
            found = _table_problems(spec, meta[:2] if meta else None, columns.get(spec.name, {}))
            if found:
                problems[spec.name] = found
        for view in ALL_VIEWS:
            meta = tables.get(view.name)
            if meta is not None and meta[0] != "View":
                problems[view.name] = [
                    f"is a {meta[0]} where gridstream keeps a view; rename it (gridstream will not "
                    "replace it)"
                ]
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

    def apply_retention(self) -> dict[str, str | None]:
        """Set each table's TTL from ``retention`` where it differs; returns the TTLs now set."""
        tables = self._tables()
        out: dict[str, str | None] = {}
        for spec in DATA_TABLES:
            wanted = ttl_expression(spec, self.retention.days(spec.name))
            found = current_ttl(tables.get(spec.name, ("", "", ""))[2])
            out[spec.name] = wanted
            if _norm(wanted) == _norm(found):
                continue
            alter = f"ALTER TABLE {{db}}.`{spec.name}`"
            if wanted is None:
                self._ddl(f"{alter} REMOVE TTL")
            else:
                # Not materialised: existing parts are not rewritten at start; they expire as
                # merges and part drops reach them (MATERIALIZE TTL at a quiet hour to force it).
                self._ddl(f"{alter} MODIFY TTL {wanted} SETTINGS materialize_ttl_after_modify = 0")
            log.info("retention of %s.%s: %s -> %s", self.database, spec.name, found, wanted)
        return out

    # -- writes and reads

    def write(
        self,
        forecasts: ForecastBatch,
        anomalies: Sequence[AnomalyRecord],
        dead_letters: Sequence[DeadLetterRecord],
        now_ms: int,
        *,
        readings: ReadingBatch | None = None,
        errors: MatchesLike | None = None,
    ) -> None:
        """Insert one batch's outputs; empty inputs are skipped. ``now_ms`` stamps the rows.
        ``errors`` are the forecasts matched with their actuals in this batch.

        Raises ``SinkError`` naming the table; ``error.retryable`` says whether to retry.
        """
        if readings is not None and len(readings) and self.store_readings:
            self._insert(READINGS, len(readings), lambda: readings_table(readings, now_ms))
        if len(forecasts):
            self._insert(FORECASTS, len(forecasts), lambda: forecasts_table(forecasts, now_ms))
        if errors is not None and errors.horizon_s.size:
            n = int(errors.horizon_s.size)
            self._insert(FORECAST_ERRORS, n, lambda: forecast_errors_table(errors, now_ms))
        if anomalies:
            self._insert(ANOMALIES, len(anomalies), lambda: anomalies_table(anomalies))
        if dead_letters:
            self._insert(DEAD_LETTERS, len(dead_letters), lambda: dead_letters_table(dead_letters))

    def write_balance(self, rows: Sequence[BalanceRows], now_ms: int) -> None:
        """Insert closed balance intervals (``energy_balance``)."""
        n = sum(len(r) for r in rows)
        if n:
            self._insert(ENERGY_BALANCE, n, lambda: energy_balance_table(rows, now_ms))

    def write_drift_events(self, events: Sequence[DriftEventLike]) -> None:
        """Insert drift events (any records with ``DriftEventLike``'s attributes)."""
        if events:
            self._insert(DRIFT_EVENTS, len(events), lambda: drift_events_table(events))

    def query(self, sql: str) -> QueryResult:
        """Run any SQL (for ``gridstream query``); ``SinkError`` if the engine rejects it."""
        return self.backend.query(sql)

    def _insert(self, spec: Table, n: int, build: Callable[[], pa.Table]) -> None:
        where = f"{self.database}.{spec.name}"
        try:
            data = build()
            token = dedup_token(spec.name, data)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            cause = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise SinkError(
                f"cannot convert {n} rows for {where}: {type(exc).__name__}: {cause}",
                table=spec.name,
            ) from exc
        try:
            self.backend.insert_arrow(self.database, spec.name, data, dedup_token=token)
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
    if not spec.accepts_engine(engine):
        problems.append(f"engine {engine}, expected {spec.engine_name} (or Replicated/Shared)")
    if _norm(key) != _norm(spec.sorting_key):
        problems.append(f"ORDER BY ({key}), expected ({spec.sorting_key})")
    for name, typ in spec.column_types().items():
        if name not in columns:
            problems.append(f"column {name} missing (expected {typ})")
        elif _norm(columns[name]) != _norm(typ):
            problems.append(f"column {name} is {columns[name]}, expected {typ}")
    return problems
