"""A test-only ClickHouse HTTP endpoint that executes every request in this process's chDB.

Real engine, real client, real wire format: what clickhouse-connect sends is parsed as a ClickHouse
server parses it (``tests.chserver.protocol``) and handed to chDB unchanged — SQL with its own
``FORMAT`` clause for results, the client's bytes (Native, RowBinary, Arrow, ...) through
``INSERT ... FROM INFILE ... FORMAT f`` for inserts — so formats, types and errors are the
engine's own.

Faults for outage tests, switched while the endpoint runs: ``refuse()`` closes the listening
socket (connection refused on the same port), ``hang()`` reads requests and never answers,
``fail(...)`` answers with an error without executing, ``lose_replies(n)`` executes and then drops
the connection before the answer (an acknowledgement lost after the write), ``serve()`` heals.

Users: the one given as ``username`` may do everything; ``users`` adds others whose privileges
(DDL, INSERT, SELECT) the endpoint checks before executing (``tests.chserver.grants``).

Not emulated: the native TCP protocol, ClickHouse's own ``compress=1``/``decompress=1`` block
format, multipart form bodies (external data), temporary tables, progress headers, session
expiry, readonly GET requests, TLS.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sinks.clickhouse_backend import ChdbBackend
from tests.chserver.engine import Answer, Engine
from tests.chserver.grants import User, denial, needed
from tests.chserver.protocol import (
    HttpError,
    choose_encoding,
    code_of,
    compress,
    content_type,
    decompress,
    error_body,
    parse_statement,
    split_params,
)


class _Truncated(ConnectionError):
    """The client went away before its request body was complete."""


@dataclass(slots=True)
class Seen:
    """One request as the endpoint saw it, for tests that check what the client sent."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body_bytes: int
    chunked: bool
    kind: str = ""
    sql: str = ""
    user: str = ""
    status: int = 0
    response_encoding: str | None = None


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: ChServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.conn_lock:
            open_ones, self.connections = list(self.connections), set()
        for conn in open_ones:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: without this, Nagle + delayed ACK add 40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass  # quiet: tests read ChServer.seen instead

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def _read_body(self) -> tuple[bytes, bool]:
        """The whole request body; a client that disconnects mid-body gets nothing executed.

        ClickHouse refuses a truncated body ("Unexpected end of chunked stream"); executing the
        part that arrived would insert a partial block under the block's deduplication token.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline()
                if not line.endswith(b"\n"):
                    raise _Truncated("connection closed inside a chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n"):
                        if not trailer:
                            raise _Truncated("connection closed in the chunked trailer")
                    return b"".join(parts), True
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise _Truncated(f"connection closed after {len(chunk)} of {size} bytes")
                parts.append(chunk)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise _Truncated(f"connection closed after {len(body)} of {length} bytes")
        return body, False

    def _handle(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            body, chunked = self._read_body()
        except _Truncated:
            self.close_connection = True  # nothing executed, nobody left to answer
            return
        seen = Seen(
            self.command,
            url.path,
            {k: v for k, v in params.items() if k != "password"},
            {k: v for k, v in self.headers.items() if k.lower() != "authorization"},
            len(body),
            chunked,
        )
        owner.seen.append(seen)
        if url.path in ("/ping", "/replicas_status") or (
            url.path == "/" and self.command == "GET" and "query" not in params
        ):
            self._send(seen, 200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        fault = owner.take_fault()
        if fault == "hang":
            owner.released.wait()
            self.close_connection = True
            return
        if isinstance(fault, HttpError):
            self._send_error(seen, fault)
            return
        try:
            answer = self._answer(seen, params, body)
        except HttpError as exc:
            self._send_error(seen, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the engine's error, answered as ClickHouse does
            text = str(exc)
            text = text[text.find("Code:") :] if "Code:" in text else text
            self._send_error(seen, HttpError(code_of(text), text))
            return
        if fault == "lose":
            self.close_connection = True  # executed, but the client never hears of it
            return
        headers = {
            "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in answer.summary.items()})
        }
        if answer.fmt is not None:
            headers["X-ClickHouse-Format"] = answer.fmt
            headers["Content-Type"] = content_type(answer.fmt)
            headers["X-ClickHouse-Timezone"] = owner.engine.timezone
        body_out = answer.body
        enabled = params.get("enable_http_compression", owner.engine.http_compression.strip())
        if enabled in ("1", "true") and body_out:
            encoding = choose_encoding(self.headers.get("Accept-Encoding"))
            if encoding is not None:
                body_out = compress(body_out, encoding)
                headers["Content-Encoding"] = encoding
                seen.response_encoding = encoding
        self._send(seen, 200, body_out, headers)

    def _answer(self, seen: Seen, params: dict[str, str], body: bytes) -> Answer:
        owner = self.server.owner
        seen.user = owner.authenticate(self.headers, params)
        req = split_params(params)
        if req.transport.get("decompress") == "1" or req.transport.get("compress") == "1":
            raise HttpError(48, "ClickHouse's native compressed HTTP bodies are not emulated here")
        data = decompress(body, self.headers.get("Content-Encoding"))
        query = req.transport.get("query", "")
        text = (query.encode() + b"\n" + data) if query and data else (query.encode() or data)
        stmt = parse_statement(text)
        seen.kind, seen.sql = stmt.kind, stmt.sql[:500]
        owner.authorize(seen.user, stmt.sql)
        sess = owner.engine.session(
            req.transport.get("session_id"), req.transport.get("session_check") == "1"
        )
        if sess is None:
            return owner.engine.execute(stmt, req, None)
        if not sess.lock.acquire(blocking=False):
            raise HttpError(
                373, f"Session {req.transport['session_id']} is locked by a concurrent client."
            )
        try:
            return owner.engine.execute(stmt, req, sess)
        finally:
            sess.lock.release()

    def _send_error(self, seen: Seen, exc: HttpError) -> None:
        if exc.code == 0:  # not ClickHouse's answer: a proxy or balancer in front of it
            plain = {"Content-Type": "text/plain; charset=UTF-8"}
            self._send(seen, exc.status, str(exc).encode(), plain)
            return
        version = self.server.owner.engine.version
        self._send(
            seen,
            exc.status,
            error_body(exc.code, str(exc), version),
            {
                "X-ClickHouse-Exception-Code": str(exc.code),
                "Content-Type": "text/plain; charset=UTF-8",
            },
        )

    def _send(self, seen: Seen, status: int, body: bytes, headers: dict[str, str]) -> None:
        seen.status = status
        self.send_response(status)
        self.send_header("X-ClickHouse-Query-Id", str(uuid.uuid4()))
        self.send_header("X-ClickHouse-Server-Display-Name", "gridstream-chserver")
        self.send_header("Keep-Alive", "timeout=10")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ChServer:
    """The endpoint on a loopback port, serving in a thread; see the module docstring."""

    def __init__(
        self,
        backend: ChdbBackend,
        *,
        username: str = "default",
        password: str = "",
        host: str = "127.0.0.1",
        users: dict[str, User] | None = None,
    ) -> None:
        self.engine = Engine(backend)
        self.username = username
        self.password = password
        # ``username`` may do everything; ``users`` adds others with some privileges (grants.py)
        self.users = {username: User(password), **(users or {})}
        self.host = host
        self.port = 0
        self.seen: list[Seen] = []
        self.released = threading.Event()
        self.released.set()
        self._faults: list[object] = []
        self._sticky: object = None
        self._fault_lock = threading.Lock()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ChServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ChServer:
        self._httpd = _HttpServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection (also wakes hung requests)."""
        self.released.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            httpd.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop, and remove the spool directory of insert bodies."""
        self.stop()
        shutil.rmtree(self.engine.spool, ignore_errors=True)

    # -- faults

    def refuse(self) -> None:
        """Connection refused on this port until ``serve()``."""
        self.stop()

    def hang(self) -> None:
        """Read every request and never answer, until ``serve()``."""
        with self._fault_lock:
            self.released.clear()
            self._sticky = "hang"

    def fail(self, code: int, message: str, *, status: int | None = None, times: int = 0) -> None:
        """Answer the next ``times`` requests (0: all, until ``serve()``) with an error;
        ``code=0`` answers like a proxy would, without a ClickHouse exception code."""
        error = HttpError(code, message, status)
        with self._fault_lock:
            if times:
                self._faults.extend([error] * times)
            else:
                self._sticky = error

    def lose_replies(self, times: int) -> None:
        """Execute the next ``times`` requests, then close the connection without answering."""
        with self._fault_lock:
            self._faults.extend(["lose"] * times)

    def serve(self) -> None:
        """Heal every fault; listen again on the same port if ``refuse()`` stopped it."""
        with self._fault_lock:
            self._faults.clear()
            self._sticky = None
        self.released.set()
        if self._httpd is None:
            deadline = time.monotonic() + 5
            while True:
                try:
                    self.start()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def take_fault(self) -> object:
        with self._fault_lock:
            if self._faults:
                return self._faults.pop(0)
            return self._sticky

    # -- auth

    def authorize(self, user: str, sql: str) -> None:
        """Refuse, as ClickHouse does (497), a statement ``user`` has no grant for."""
        privilege = needed(sql)
        if privilege is not None and privilege not in self.users[user].privileges:
            raise HttpError(497, denial(user, privilege))

    def authenticate(self, headers: Any, params: dict[str, str]) -> str:
        """The user a request authenticates as; 516 for an unknown user or a wrong password."""
        user, password = params.get("user"), params.get("password")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        elif headers.get("X-ClickHouse-User"):
            user, password = headers.get("X-ClickHouse-User"), headers.get("X-ClickHouse-Key", "")
        user = user or "default"
        known = self.users.get(user)
        if known is None or (password or "") != known.password:
            raise HttpError(
                516,
                f"{user}: Authentication failed: password is incorrect, "
                "or there is no user with such name. (AUTHENTICATION_FAILED)",
            )
        return user
