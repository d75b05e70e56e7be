"""What both ClickHouse backends share: the port, results as Python values, error classification.

The runtime needs one decision from an error: retry the batch later (``SinkUnavailable``: the
engine or the way to it is down or overloaded for now) or stop and tell an operator
(``QueryFailed``: the statement, the data or the credentials are wrong and a retry fails again).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Protocol, runtime_checkable

import pyarrow as pa

from sinks.exceptions import QueryFailed, SinkError, SinkUnavailable

# ClickHouse error codes that describe a transient state of the server, not a wrong statement.
RETRYABLE_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY (replica read-only for a while)
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS (merges are behind; not "too many partitions", see below)
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)
# Codes that mean the credentials are wrong: not retryable, and worth saying so.
AUTH_CODES = frozenset({192, 193, 194, 516})
_CODE = re.compile(r"Code:\s*(\d+)")
# clickhouse-connect's text for an HTTP error without a ClickHouse code (a proxy or balancer).
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
# TOO_MANY_PARTS is also raised for one insert spanning too many partitions: never transient.
_TOO_MANY_PARTITIONS = "partitions for single INSERT block"
_MAX_CAUSE = 300


class QueryResult(NamedTuple):
    """Column names and rows of a query; values are plain Python (str, int, float, datetime...)."""

    column_names: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@runtime_checkable
class ClickHouseBackend(Protocol):
    """What the sink needs from a ClickHouse engine."""

    def command(self, sql: str) -> None:
        """Run a statement whose result is not needed (DDL, INSERT ... VALUES)."""

    def query(self, sql: str) -> QueryResult:
        """Run a statement and return its result."""

    def insert_arrow(
        self, database: str, table: str, data: pa.Table, *, dedup_token: str | None = None
    ) -> None:
        """Insert the columns of ``data`` (named like the table's columns) into a table.

        With ``dedup_token``, a second insert with the same token is dropped by the engine
        (``insert_deduplication_token``; the table needs a deduplication window).
        """

    def close(self) -> None:
        """Release the connection or session; idempotent."""


def short_cause(exc: BaseException, secret: str | None = None) -> str:
    """The first line of an error, trimmed, with a secret (password) blanked out."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= _MAX_CAUSE else text[: _MAX_CAUSE - 1] + "…"


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of an exception, from its ``code`` or its message."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def classify(exc: BaseException) -> type[SinkError]:
    """``SinkUnavailable`` for a transient state of the engine, else ``QueryFailed``."""
    code = error_code(exc)
    if code is None:
        status = _HTTP_STATUS.search(str(exc))
        if status is not None and int(status.group(1)) in _UNAVAILABLE_STATUSES:
            return SinkUnavailable
        return QueryFailed
    if code == 252 and _TOO_MANY_PARTITIONS in str(exc):
        return QueryFailed
    return SinkUnavailable if code in RETRYABLE_CODES else QueryFailed


# ---------------------------------------------------------------- Arrow results to Python values


def _needs_conversion(typ: pa.DataType) -> bool:
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_map(typ):
        return True
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _needs_conversion(typ.value_type)
    if pa.types.is_struct(typ):
        return any(_needs_conversion(typ.field(i).type) for i in range(typ.num_fields))
    if pa.types.is_dictionary(typ):
        return _needs_conversion(typ.value_type)
    return False


def _convert(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_dictionary(typ):
        return _convert(value, typ.value_type)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if pa.types.is_map(typ):
        return {_convert(k, typ.key_type): _convert(v, typ.item_type) for k, v in value}
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return [_convert(v, typ.value_type) for v in value]
    if pa.types.is_struct(typ):
        return {f.name: _convert(value[f.name], f.type) for f in typ}
    return value


def arrow_to_result(table: pa.Table) -> QueryResult:
    """Rows of an Arrow result. ClickHouse ``String`` arrives as binary (it may hold any bytes):
    a value that is valid UTF-8 becomes ``str``, any other stays ``bytes``; Maps become dicts."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        values = column.to_pylist()
        if _needs_conversion(field.type):
            values = [_convert(v, field.type) for v in values]
        columns.append(values)
    rows = list(zip(*columns, strict=True)) if columns else []
    return QueryResult(tuple(table.schema.names), rows)
