"""Statements of the test endpoint, executed in chDB with ClickHouse's database/session rules.

A request's database (the ``database`` parameter, else its session's ``USE``) is switched to and
back around the statement, under the backend's lock: the chDB session is shared with the test's
``ChdbBackend``, which must not notice. Settings (URL parameters and a session's ``SET``) are
appended as a ``SETTINGS`` clause to queries and inserts; for other statements (DDL) they are
checked by name and otherwise not applied — a DDL ``SETTINGS`` clause means table settings.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass, field

from sinks.clickhouse_backend import ChdbBackend
from tests.chserver.protocol import (
    HttpError,
    Request,
    Statement,
    parse_assignments,
    settings_clause,
)

_INSERT_SETTINGS = re.compile(r"^(.*?)\s+SETTINGS\s+(.*)$", re.S | re.I)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(slots=True)
class _Session:
    database: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class Answer:
    body: bytes = b""
    fmt: str | None = None
    summary: dict[str, int] = field(default_factory=dict)


class Engine:
    """Runs statements in chDB under the backend's lock, emulating database and session state."""

    def __init__(self, backend: ChdbBackend) -> None:
        self.backend = backend
        self.spool = tempfile.mkdtemp(prefix="chserver-")
        self.sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()
        row = self._run_text("SELECT version(), timezone()").strip().split("\t")
        self.version, self.timezone = row[0], row[1]
        names = self._run_text("SELECT name FROM system.settings").split("\n")
        self.known_settings = frozenset(n for n in names if n)
        # The engine's default, used when a request does not set it (chDB's is 1).
        self.http_compression = self._run_text("SELECT getSetting('enable_http_compression')")

    def _run_text(self, sql: str) -> str:
        with self.backend.lock:
            return self.backend.session.query(sql, "TabSeparated").bytes().decode()

    def session(self, session_id: str | None, check: bool) -> _Session | None:
        if not session_id:
            return None
        with self._sessions_lock:
            found = self.sessions.get(session_id)
            if found is None:
                if check:
                    raise HttpError(372, f"Session {session_id} not found")  # SESSION_NOT_FOUND
                found = self.sessions[session_id] = _Session()
            return found

    def execute(self, stmt: Statement, req: Request, sess: _Session | None) -> Answer:
        settings = {**(sess.settings if sess else {}), **req.settings}
        database = req.transport.get("database") or (sess.database if sess else None)
        if stmt.kind == "use":
            self._check_database(stmt.target)
            if sess is not None:
                sess.database = stmt.target
            return Answer()
        if stmt.kind == "set":
            assigned = parse_assignments(stmt.target)
            self._check_settings(assigned)
            if sess is not None:
                sess.settings.update(assigned)
            return Answer()
        if database is not None and not _IDENTIFIER.fullmatch(database):
            raise HttpError(81, f"Database {database} does not exist. (UNKNOWN_DATABASE)")
        if stmt.kind == "command":
            self._check_settings(settings)  # commands run without them (see module docstring)
        with self.backend.lock:
            previous = self._use(database)
            try:
                if stmt.kind == "insert_data":
                    return self._insert(stmt, settings)
                return self._run(stmt, settings, req)
            finally:
                self._use(previous, restore=True)

    def _run(self, stmt: Statement, settings: dict[str, str], req: Request) -> Answer:
        sql = stmt.sql + settings_clause(settings, stmt.sql) if stmt.kind == "result" else stmt.sql
        session = self.backend.session
        default = req.transport.get("default_format", "TabSeparated")
        result = session.query(sql, default, params=req.params or None)
        body = result.bytes() or b""
        summary = {
            "read_rows": result.rows_read(),
            "read_bytes": result.bytes_read(),
            "written_rows": result.rows_written(),
            "written_bytes": result.bytes_written(),
            "result_bytes": len(body),
        }
        if stmt.kind == "result":
            return Answer(body, stmt.fmt or default, summary)
        return Answer(body, None, summary)

    def _insert(self, stmt: Statement, settings: dict[str, str]) -> Answer:
        """The data through a file: ``INSERT ... FROM INFILE`` parses it with the table's own
        input format, like the server's HTTP handler. (chDB's streaming ``send_insert`` returns
        "0 rows written" instead of raising some errors, TOO_MANY_PARTS among them.)"""
        head = stmt.sql
        inline = _INSERT_SETTINGS.match(head)
        if inline is not None:  # SETTINGS must follow FROM INFILE; merge the client's own
            head = inline.group(1)
            settings = {**parse_assignments(inline.group(2)), **settings}
        fd, path = tempfile.mkstemp(prefix="insert-", suffix=".bin", dir=self.spool)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(stmt.data)
            sql = f"{head} FROM INFILE '{path}'{settings_clause(settings, '')} FORMAT {stmt.fmt}"
            result = self.backend.session.query(sql, "TabSeparated")
        finally:
            os.unlink(path)
        return Answer(
            summary={
                "written_rows": result.rows_written(),
                "written_bytes": result.bytes_written(),
                "elapsed_ns": int(result.elapsed() * 1e9),
            }
        )

    def _use(self, database: str | None, restore: bool = False) -> str | None:
        """Switch the chDB session to ``database``; returns the one to switch back to."""
        if database is None:
            return None
        session = self.backend.session
        current = session.query("SELECT currentDatabase()", "TabSeparated").bytes().decode().strip()
        if current != database:
            if not restore:
                self._check_database(database, locked=True)
            session.query(f"USE `{database}`", "TabSeparated")
        return current

    def _check_database(self, name: str, locked: bool = False) -> None:
        sql = f"SELECT count() FROM system.databases WHERE name = '{name}'"
        text = (
            self.backend.session.query(sql, "TabSeparated").bytes().decode()
            if locked
            else self._run_text(sql)
        )
        if text.strip() != "1":
            raise HttpError(81, f"Database {name} does not exist. (UNKNOWN_DATABASE)")

    def _check_settings(self, settings: dict[str, str]) -> None:
        for name in settings:
            if name not in self.known_settings:
                raise HttpError(115, f"Unknown setting '{name}'. (UNKNOWN_SETTING)")
