"""The building blocks of ``sinks.ddl``: quoting, rendering for a database (and a cluster), and
the ``Column`` / ``Table`` / ``Migration`` / ``Retention`` types the schema is written in."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sinks.exceptions import SinkConfigError

DEFAULT_DATABASE = "gridstream"
DB = "{db}"  # placeholder in statements, replaced by the quoted database name
DEDUP_WINDOW = 1000  # insert tokens remembered per table: ~1000 batches of replay protection

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def quote_database(name: str) -> str:
    """The database name, back-quoted; only plain identifiers, so it can never inject SQL."""
    if not _IDENTIFIER.match(name):
        raise SinkConfigError(
            f"invalid ClickHouse database name {name!r}: use letters, digits and '_', "
            "not starting with a digit"
        )
    return f"`{name}`"


# DDL that ClickHouse runs on every node of a cluster with ``ON CLUSTER``: the clause goes right
# after the object's name. INSERT and SELECT never take it.
_DDL_HEAD = re.compile(
    r"^(\s*(?:CREATE\s+DATABASE|CREATE\s+TABLE|CREATE\s+(?:OR\s+REPLACE\s+)?VIEW|"
    r"CREATE\s+MATERIALIZED\s+VIEW|ALTER\s+TABLE|DROP\s+(?:TABLE|VIEW))"
    r"(?:\s+IF\s+(?:NOT\s+)?EXISTS)?\s+\{db\}(?:\.`[^`]+`)?)",
    re.I,
)
_PLAIN_ENGINE = re.compile(r"\bENGINE\s*=\s*(?=(?:Replacing|Aggregating|Summing)?MergeTree\b)")


def quote_cluster(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise SinkConfigError(f"invalid ClickHouse cluster name {name!r}: use an identifier")
    return f"`{name}`"


def render(statement: str, database: str, cluster: str | None = None) -> str:
    """A statement with ``{db}`` replaced by the quoted database name.

    With ``cluster``, DDL gets ``ON CLUSTER`` and MergeTree engines become their ``Replicated``
    form with the server's default replica path (``default_replica_path``/``_name``, by default
    ``/clickhouse/tables/{uuid}/{shard}`` and ``{replica}``), so every replica holds every row.
    Not needed on ClickHouse Cloud or in a ``Replicated`` database, which do both themselves.
    """
    if cluster is not None:
        head = _DDL_HEAD.match(statement)
        if head is not None:
            statement = (
                statement[: head.end()]
                + f" ON CLUSTER {quote_cluster(cluster)}"
                + statement[head.end() :]
            )
            statement = _PLAIN_ENGINE.sub("ENGINE = Replicated", statement)
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
    indexes: tuple[str, ...] = ()  # "name expr TYPE t GRANULARITY g"
    ttl_column: str | None = None  # the time a retention TTL counts from
    dedup_window: int = DEDUP_WINDOW
    settings: tuple[str, ...] = ()  # further "name = value" table settings

    @property
    def engine_name(self) -> str:
        return self.engine.split("(", 1)[0]

    def accepts_engine(self, found: str) -> bool:
        """Is ``found`` this table's engine, or its replicated (``Replicated*``, on a cluster)
        or shared (``Shared*``, ClickHouse Cloud) form? Their rows and keys behave the same."""
        return found in (
            self.engine_name,
            f"Replicated{self.engine_name}",
            f"Shared{self.engine_name}",
        )

    @property
    def sorting_key(self) -> str:
        """The sorting key as ``system.tables.sorting_key`` shows it."""
        return ", ".join(self.order_by)

    def column_types(self) -> dict[str, str]:
        return {c.name: c.type for c in self.columns}

    def create_sql(self) -> str:
        parts = [c.sql() for c in self.columns] + [f"INDEX {i}" for i in self.indexes]
        body = ",\n    ".join(parts)
        partition = f"\nPARTITION BY {self.partition_by}" if self.partition_by else ""
        # One column without parentheses: ClickHouse would report "(version)" as the sorting key.
        key = self.sorting_key if len(self.order_by) == 1 else f"({self.sorting_key})"
        pairs = (
            [f"non_replicated_deduplication_window = {self.dedup_window}"]
            if self.dedup_window
            else []
        ) + list(self.settings)
        settings = f"\nSETTINGS {', '.join(pairs)}" if pairs else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {DB}.`{self.name}` (\n    {body}\n)\n"
            f"ENGINE = {self.engine}{partition}\nORDER BY {key}{settings}"
        )


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: idempotent statements with ``{db}`` placeholders, applied in order."""

    version: int
    description: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retention:
    """Days each table keeps rows, counted from its ``ttl_column``; 0 keeps them forever.

    Applied as table TTLs at every start (``ALTER TABLE ... MODIFY TTL`` only when it changed),
    so an operator changes retention with a setting, not a migration.
    """

    readings_days: int = 0
    forecasts_days: int = 0
    anomalies_days: int = 0
    drift_events_days: int = 0
    dead_letters_days: int = 0

    def __post_init__(self) -> None:
        for name in self.__slots__:
            days = getattr(self, name)
            if not isinstance(days, int) or days < 0:
                raise SinkConfigError(f"retention {name} must be a whole number >= 0, got {days!r}")

    def days(self, table: str) -> int:
        return int(getattr(self, f"{table}_days"))
