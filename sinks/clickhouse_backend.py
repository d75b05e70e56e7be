"""Two ways to reach a ClickHouse engine behind one port: embedded chDB, or a server.

Both take the same SQL and the same Arrow tables, and both return query results through the same
Arrow-to-Python conversion (``sinks.clickhouse_common``), so the sink and its tests do not care
which one they talk to. Both raise only ``SinkError`` subclasses: ``SinkUnavailable`` for outages
worth retrying, ``QueryFailed`` for statements the engine rejects, ``EmbeddedInUse`` for a held
chDB directory. The server backend lives in ``sinks.clickhouse_server``.

chDB runs one embedded server per process, on one data directory: the ``ChdbBackend`` instances of
a process share one session per path (reference counted; the last ``close`` releases it), and
asking for a second path while the first is open is an error that names both. A chDB session runs
one statement at a time, so the shared session comes with a lock that every user takes.
"""

from __future__ import annotations

import re
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow as pa

from sinks.clickhouse_common import (
    RETRYABLE_CODES,
    ClickHouseBackend,
    QueryResult,
    arrow_to_result,
    classify,
    error_code,
    short_cause,
)
from sinks.clickhouse_server import ServerBackend
from sinks.exceptions import EmbeddedInUse, QueryFailed, SinkConfigError, SinkError

__all__ = [
    "RETRYABLE_CODES",
    "ChdbBackend",
    "ClickHouseBackend",
    "QueryResult",
    "ServerBackend",
    "arrow_to_result",
    "error_code",
    "insert_statement",
    "short_cause",
]


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,200}")


def insert_statement(
    database: str, table: str, names: list[str], source: str, dedup_token: str | None = None
) -> str:
    cols = ", ".join(f"`{n}`" for n in names)
    settings = ""
    if dedup_token is not None:
        if not _TOKEN.fullmatch(dedup_token):
            raise SinkConfigError(
                f"insert deduplication token must be [A-Za-z0-9_-]: {dedup_token!r}"
            )
        settings = f" SETTINGS insert_deduplication_token = '{dedup_token}'"
    return (
        f"INSERT INTO `{database}`.`{table}` ({cols}){settings} SELECT {cols} FROM Python({source})"
    )


# ------------------------------------------------------------------------------ embedded chDB


class _Shared:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.users = 0
        self.lock = threading.RLock()


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

    @property
    def lock(self) -> AbstractContextManager[bool]:
        """Held while a statement runs on the shared session; take it to use ``session``."""
        if self._shared is None:
            raise SinkConfigError(f"{self!r} is closed")
        return self._shared.lock

    def _run(self, sql: str, fmt: str) -> Any:
        session = self.session
        try:
            with self.lock:
                return session.query(sql, fmt)
        except Exception as exc:  # ChdbError (a RuntimeError) or a conversion error of Python()
            raise classify(exc)(f"embedded ClickHouse: {short_cause(exc)}") from exc

    def command(self, sql: str) -> None:
        self._run(sql, "CSV")

    def query(self, sql: str) -> QueryResult:
        return arrow_to_result(self._run(sql, "ArrowTable"))

    def insert_arrow(
        self, database: str, table: str, data: pa.Table, *, dedup_token: str | None = None
    ) -> None:
        _gridstream_rows = data  # noqa: F841 -- chDB's Python() finds it by name in this frame
        names = data.schema.names
        self._run(insert_statement(database, table, names, "_gridstream_rows", dedup_token), "CSV")

    def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None:
            return
        with _REGISTRY_LOCK:
            shared.users -= 1
            if shared.users == 0:
                _REGISTRY.pop(self.path, None)
                shared.session.close()
