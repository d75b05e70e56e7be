"""A ClickHouse server over HTTP(S) with clickhouse-connect, behind the sink's backend port.

Choices, each for the runtime's retry loop and for operators:

- Connects on first use and again after a failed connect, so a server that was down when the
  processor started is picked up when it comes back.
- Bounded waits: ``connect_timeout`` and ``send_receive_timeout`` are applied as given (floats;
  clickhouse-connect would round them down to whole seconds, 0.5 s becoming "no wait").
- No HTTP session: every statement names its database, so there is no server-side state to lose
  when a session expires or a balancer switches nodes, and one backend may serve several threads.
  ``USE db`` is honoured client-side (it sets the database sent with every request).
- Inserts are Arrow with LZ4-compressed buffers and an ``insert_deduplication_token`` setting;
  with ``async_insert`` also ``ASYNC_INSERT_SETTINGS``.
- Times come back timezone-aware (``tz_mode="aware"``), like chDB's.
- The password is a ``SecretStr``, shown as stars in ``repr`` and blanked out of every error.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import pyarrow as pa
from pydantic import SecretStr

from sinks.clickhouse_common import (
    AUTH_CODES,
    QueryResult,
    arrow_to_result,
    classify,
    error_code,
    short_cause,
)
from sinks.exceptions import QueryFailed, SinkError, SinkUnavailable

# Many small writers: the server buffers inserts and writes fewer, larger parts. Waiting for the
# flush keeps at-least-once (an insert is acknowledged once written); async_insert_deduplicate
# keeps the insert tokens working on Replicated/Shared tables (on a plain MergeTree, async inserts
# are not deduplicated: a replayed batch is then collapsed by the ReplacingMergeTree key instead).
ASYNC_INSERT_SETTINGS: dict[str, int] = {
    "async_insert": 1,
    "wait_for_async_insert": 1,
    "async_insert_deduplicate": 1,
}

_USE = re.compile(r"^\s*USE\s+`?([A-Za-z_][A-Za-z0-9_]*)`?\s*;?\s*$", re.I)


class ServerBackend:
    """A ClickHouse server over HTTP(S); see the module docstring for the decisions."""

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
        async_insert: bool = False,
    ) -> None:
        if connect_timeout <= 0 or send_receive_timeout <= 0:
            raise ValueError("ClickHouse timeouts must be > 0 seconds")
        self.host = host
        self.port = port if port is not None else (8443 if secure else 8123)
        self.username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        self.database = database
        self.secure = secure
        self.verify = verify
        self.connect_timeout = connect_timeout
        self.send_receive_timeout = send_receive_timeout
        self.async_insert = async_insert
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

        cls = SinkUnavailable if isinstance(exc, OperationalError) else classify(exc)
        where = f"{self.host}:{self.port}"
        hint = ""
        if error_code(exc) in AUTH_CODES:
            cls, hint = QueryFailed, " (check the ClickHouse username and password)"
        return cls(f"ClickHouse at {where}, {what}: {short_cause(exc, self._secret())}{hint}")

    def client(self) -> Any:
        """The clickhouse-connect client, created (and the server reached) on first call."""
        with self._lock:
            if self._client is None:
                import clickhouse_connect
                from urllib3 import Timeout

                try:
                    client = clickhouse_connect.get_client(
                        host=self.host,
                        port=self.port,
                        username=self.username,
                        password=self._password.get_secret_value(),
                        database=self.database,
                        secure=self.secure,
                        verify=self.verify,
                        # whole seconds here; the exact values are set on the client below
                        connect_timeout=max(1, math.ceil(self.connect_timeout)),
                        send_receive_timeout=max(1, math.ceil(self.send_receive_timeout)),
                        autogenerate_session_id=False,
                        tz_mode="aware",
                    )
                except Exception as exc:  # a failed connect: classified like any other error
                    raise self._wrap(exc, "connect") from self._cause(exc)
                client.timeout = Timeout(
                    connect=self.connect_timeout, read=self.send_receive_timeout
                )
                self._client = client
            return self._client

    def command(self, sql: str) -> None:
        use = _USE.match(sql)
        if use is not None:
            self._use(use.group(1))
            return
        client = self.client()
        try:
            client.command(sql)
        except Exception as exc:
            raise self._wrap(exc, "command") from self._cause(exc)

    def _use(self, database: str) -> None:
        client = self.client()
        try:
            exists = client.command(f"EXISTS DATABASE `{database}`")
        except Exception as exc:
            raise self._wrap(exc, "command") from self._cause(exc)
        if str(exists).strip() != "1":
            raise QueryFailed(
                f"ClickHouse at {self.host}:{self.port}: Database {database} does not exist "
                "(UNKNOWN_DATABASE)"
            )
        client.database = self.database = database

    def query(self, sql: str) -> QueryResult:
        client = self.client()
        try:
            table = client.query_arrow(sql, use_strings=False)
        except Exception as exc:
            raise self._wrap(exc, "query") from self._cause(exc)
        return arrow_to_result(table)

    def insert_arrow(
        self, database: str, table: str, data: pa.Table, *, dedup_token: str | None = None
    ) -> None:
        client = self.client()
        settings: dict[str, Any] = (
            {"insert_deduplication_token": dedup_token} if dedup_token else {}
        )
        if self.async_insert:
            settings.update(ASYNC_INSERT_SETTINGS)
        try:
            client.insert_arrow(table, data, database=database, settings=settings or None)
        except Exception as exc:
            raise self._wrap(exc, f"insert into {database}.{table}") from self._cause(exc)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
