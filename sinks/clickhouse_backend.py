"""Two ways to reach a ClickHouse engine behind one port: embedded chDB, or a server.

Both take the same SQL and the same Arrow tables, and both return query results through the same
Arrow-to-Python conversion, so the sink and its tests do not care which one they talk to. Both
raise only ``SinkError`` subclasses: ``SinkUnavailable`` for outages worth retrying,
``QueryFailed`` for statements the engine rejects, ``EmbeddedInUse`` for a held chDB directory.

chDB runs one embedded server per process, on one data directory: the ``ChdbBackend`` instances of
a process share one session per path (reference counted; the last ``close`` releases it), and
asking for a second path while the first is open is an error that names both.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import pyarrow as pa
from pydantic import SecretStr

from sinks.exceptions import (
    EmbeddedInUse,
    QueryFailed,
    SinkConfigError,
    SinkError,
    SinkUnavailable,
)

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
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)
_CODE = re.compile(r"Code:\s*(\d+)")
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

    def insert_arrow(self, database: str, table: str, data: pa.Table) -> None:
        """Insert the columns of ``data`` (named like the table's columns) into a table."""

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
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def _classify(code: int | None) -> type[SinkError]:
    return SinkUnavailable if code in RETRYABLE_CODES else QueryFailed


# ---------------------------------------------------------------- Arrow results to Python values


def _needs_conversion(typ: pa.DataType) -> bool:
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_map(typ):
        return True
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _needs_conversion(typ.value_type)
    if pa.types.is_struct(typ):
        return any(_needs_conversion(typ.field(i).type) for i in range(typ.num_fields))
    return False


def _convert(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
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


def insert_statement(database: str, table: str, names: list[str], source: str) -> str:
    cols = ", ".join(f"`{n}`" for n in names)
    return f"INSERT INTO `{database}`.`{table}` ({cols}) SELECT {cols} FROM Python({source})"


# ------------------------------------------------------------------------------ embedded chDB


class _Shared:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.users = 0


_REGISTRY: dict[str, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


def _open_session(path: str) -> Any:
    from chdb import session as chdb_session  # heavy native import, only when embedded is used

    try:
        sess = chdb_session.Session(path)
    except RuntimeError as exc:
        text = str(exc)
        if "already initialized with path" in text:
            raise EmbeddedInUse(
                f"this process already runs embedded ClickHouse on another data directory; "
                f"cannot also open {path} (chDB allows one directory per process): "
                f"{short_cause(exc)}"
            ) from exc
        if "Error initializing EmbeddedServer" in text:
            raise EmbeddedInUse(
                f"the embedded ClickHouse at {path} is in use by another process (a running "
                "gridstream?); stop it, point GRIDSTREAM_CLICKHOUSE__PATH at another directory, "
                "or use a server (GRIDSTREAM_CLICKHOUSE__BACKEND=server, ..._HOST)"
            ) from exc
        raise SinkError(f"cannot open embedded ClickHouse at {path}: {short_cause(exc)}") from exc
    try:
        # Strings come back as Arrow binary: ClickHouse String is bytes, not always UTF-8.
        sess.query("SET output_format_arrow_string_as_string = 0")
    except RuntimeError as exc:
        sess.close()
        raise QueryFailed(
            f"cannot configure embedded ClickHouse at {path}: {short_cause(exc)}"
        ) from exc
    return sess


class ChdbBackend:
    """ClickHouse in-process (chDB) on a data directory; one directory per process, shared."""

    def __init__(self, path: str | Path) -> None:
        resolved = Path(path).expanduser().resolve()
        if "?" in str(resolved):
            raise SinkConfigError(f"chDB path must not contain '?': {resolved}")
        self.path = str(resolved)
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(self.path)
            if shared is None:
                if _REGISTRY:
                    other = next(iter(_REGISTRY))
                    raise EmbeddedInUse(
                        f"embedded ClickHouse is already open on {other} in this process; "
                        f"cannot also open {self.path} (chDB allows one directory per process)"
                    )
                resolved.mkdir(parents=True, exist_ok=True)
                shared = _REGISTRY[self.path] = _Shared(_open_session(self.path))
            shared.users += 1
        self._shared: _Shared | None = shared

    def __repr__(self) -> str:
        return f"ChdbBackend(path={self.path!r})"

    @property
    def session(self) -> Any:
        """The shared chDB session (same object for every backend on this path)."""
        if self._shared is None:
            raise SinkConfigError(f"{self!r} is closed")
        return self._shared.session

    def _run(self, sql: str, fmt: str) -> Any:
        session = self.session
        try:
            return session.query(sql, fmt)
        except Exception as exc:  # ChdbError (a RuntimeError) or a conversion error of Python()
            code = error_code(exc)
            raise _classify(code)(f"embedded ClickHouse: {short_cause(exc)}") from exc

    def command(self, sql: str) -> None:
        self._run(sql, "CSV")

    def query(self, sql: str) -> QueryResult:
        return arrow_to_result(self._run(sql, "ArrowTable"))

    def insert_arrow(self, database: str, table: str, data: pa.Table) -> None:
        _gridstream_rows = data  # noqa: F841 -- chDB's Python() finds it by name in this frame
        self._run(insert_statement(database, table, data.schema.names, "_gridstream_rows"), "CSV")

    def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None:
            return
        with _REGISTRY_LOCK:
            shared.users -= 1
            if shared.users == 0:
                _REGISTRY.pop(self.path, None)
                shared.session.close()


# --------------------------------------------------------------------------- ClickHouse server


class ServerBackend:
    """A ClickHouse server over HTTP(S) with clickhouse-connect; connects on first use.

    ``database`` is only the connection's default (it must exist); the sink names its own
    database in every statement. The password is held as a ``SecretStr``, shown as stars in
    ``repr`` and blanked out of every error this class raises.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int | None = None,
        username: str = "default",
        password: SecretStr | str = "",
        database: str = "default",
        *,
        secure: bool = False,
        verify: bool = True,
        connect_timeout: float = 10.0,
        send_receive_timeout: float = 300.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else (8443 if secure else 8123)
        self.username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        self.database = database
        self.secure = secure
        self.verify = verify
        self.connect_timeout = connect_timeout
        self.send_receive_timeout = send_receive_timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return (
            f"ServerBackend({scheme}://{self.host}:{self.port}, username={self.username!r}, "
            f"database={self.database!r}, password=**********)"
        )

    def _secret(self) -> str | None:
        return self._password.get_secret_value() or None

    def _cause(self, exc: Exception) -> Exception | None:
        """The original error to chain, unless its text would leak the password."""
        secret = self._secret()
        return None if secret and secret in str(exc) else exc

    def _wrap(self, exc: Exception, what: str) -> SinkError:
        from clickhouse_connect.driver.exceptions import OperationalError

        code = error_code(exc)
        cls = SinkUnavailable if isinstance(exc, OperationalError) else _classify(code)
        where = f"{self.host}:{self.port}"
        return cls(f"ClickHouse at {where}, {what}: {short_cause(exc, self._secret())}")

    def client(self) -> Any:
        """The clickhouse-connect client, created (and the server reached) on first call."""
        with self._lock:
            if self._client is None:
                import clickhouse_connect

                try:
                    self._client = clickhouse_connect.get_client(
                        host=self.host,
                        port=self.port,
                        username=self.username,
                        password=self._password.get_secret_value(),
                        database=self.database,
                        secure=self.secure,
                        verify=self.verify,
                        connect_timeout=self.connect_timeout,
                        send_receive_timeout=self.send_receive_timeout,
                    )
                except Exception as exc:  # any failure to connect is an outage
                    raise self._wrap(exc, "connect") from self._cause(exc)
            return self._client

    def command(self, sql: str) -> None:
        client = self.client()
        try:
            client.command(sql)
        except Exception as exc:
            raise self._wrap(exc, "command") from self._cause(exc)

    def query(self, sql: str) -> QueryResult:
        client = self.client()
        try:
            table = client.query_arrow(sql, use_strings=False)
        except Exception as exc:
            raise self._wrap(exc, "query") from self._cause(exc)
        return arrow_to_result(table)

    def insert_arrow(self, database: str, table: str, data: pa.Table) -> None:
        client = self.client()
        try:
            client.insert_arrow(table, data, database=database)
        except Exception as exc:
            raise self._wrap(exc, f"insert into {database}.{table}") from self._cause(exc)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
