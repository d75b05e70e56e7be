"""The server path for real: clickhouse-connect over HTTP to the test endpoint, executed in chDB.

First what the endpoint speaks (so the sink tests on it mean something), then how
``ServerBackend`` behaves when the server refuses, hangs, errs or loses an acknowledgement.
"""

from __future__ import annotations

import datetime as dt
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import numpy as np
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from schemas.batch import ForecastBatch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend, ServerBackend
from sinks.exceptions import QueryFailed, SinkError, SinkUnavailable
from tests.chserver import PASSWORD, USER, ChServer

pytestmark = pytest.mark.integration

T0 = 1_718_000_000_000


@pytest.fixture
def server(chserver: ChServer) -> ChServer:
    chserver.seen.clear()
    return chserver


@pytest.fixture
def client(server: ChServer) -> Iterator[object]:
    c = clickhouse_connect.get_client(
        host="127.0.0.1", port=server.port, username=USER, password=PASSWORD
    )
    yield c
    c.close()


@pytest.fixture
def db(client: object, unique: str) -> Iterator[str]:
    name = f"srv_{unique}"
    client.command(f"CREATE DATABASE {name}")  # type: ignore[attr-defined]
    yield name
    client.command(f"DROP DATABASE IF EXISTS {name}")  # type: ignore[attr-defined]


@pytest.fixture
def own_server(chdb_path: Path) -> Iterator[ChServer]:
    """An endpoint of the test's own, to break without disturbing the others."""
    backend = ChdbBackend(chdb_path)
    with ChServer(backend, username=USER, password=PASSWORD) as srv:
        yield srv
    backend.close()


def _post(server: ChServer, query: str, body: bytes = b"", auth: bool = True) -> tuple:
    """A raw HTTP request; returns (status, headers, body)."""
    url = f"{server.url}/?{query}"
    req = urllib.request.Request(url, data=body or None, method="POST")  # noqa: S310 -- http
    if auth:
        req.add_header("X-ClickHouse-User", USER)
        req.add_header("X-ClickHouse-Key", PASSWORD)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 -- loopback
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# ------------------------------------------------------------------------- the HTTP interface


def test_connect_runs_the_handshake_and_ping_answers(server: ChServer, client: object) -> None:
    version = ChdbBackend(server.engine.backend.path)
    try:
        assert client.server_version == version.query("SELECT version()").rows[0][0]  # type: ignore[attr-defined]
    finally:
        version.close()
    assert client.ping()  # type: ignore[attr-defined]
    handshake = [s.sql for s in server.seen if s.kind == "result"][:2]
    assert handshake[0] == "SELECT version(), timezone()"
    assert "system.settings" in handshake[1]
    with urllib.request.urlopen(f"{server.url}/ping", timeout=10) as resp:  # noqa: S310
        assert resp.read() == b"Ok.\n"


def test_native_insert_is_chunked_lz4_and_native_results_keep_types(
    server: ChServer, client: object, db: str
) -> None:
    client.command(  # type: ignore[attr-defined]
        f"CREATE TABLE {db}.t (k UInt32, s LowCardinality(String), ts DateTime64(3, 'UTC'), "
        "m Map(String, Float64), n Nullable(Float64), a Array(String)) "
        "ENGINE = MergeTree ORDER BY k"
    )
    when = dt.datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=dt.UTC)
    data = [
        [1, "feeder", when, {"x": 1.5}, None, ["a", "b"]],
        [2, "meter", when, {}, -2.5, []],
    ]
    client.insert(f"{db}.t", data, column_names=["k", "s", "ts", "m", "n", "a"])  # type: ignore[attr-defined]
    insert = next(s for s in server.seen if s.kind == "insert_data")
    assert insert.chunked and insert.headers["Content-Encoding"] == "lz4"
    assert "query" not in insert.params  # the statement travels inside the compressed body
    got = client.query(f"SELECT * FROM {db}.t ORDER BY k").result_rows  # type: ignore[attr-defined]
    naive = when.replace(tzinfo=None)  # clickhouse-connect's default tz_mode is naive UTC
    assert got == [
        (1, "feeder", naive, {"x": 1.5}, None, ["a", "b"]),
        (2, "meter", naive, {}, -2.5, []),
    ]
    select = [s for s in server.seen if s.sql.startswith(f"SELECT * FROM {db}.t")][-1]
    assert select.response_encoding == "lz4"


@pytest.mark.parametrize("method", ["zstd", "gzip"])  # clickhouse-connect writes no deflate
def test_other_compressions_both_ways(server: ChServer, db: str, method: str) -> None:
    c = clickhouse_connect.get_client(
        host="127.0.0.1", port=server.port, username=USER, password=PASSWORD, compress=method
    )
    try:
        c.command(f"CREATE TABLE {db}.c (k UInt64, s String) ENGINE = MergeTree ORDER BY k")
        c.insert(f"{db}.c", [[i, f"row {i}"] for i in range(1000)], column_names=["k", "s"])
        assert c.query(f"SELECT count(), sum(k) FROM {db}.c").result_rows == [(1000, 499500)]
    finally:
        c.close()
    insert = next(s for s in server.seen if s.kind == "insert_data")
    assert insert.headers["Content-Encoding"] == method
    assert server.seen[-1].response_encoding == method


def test_rowbinary_in_and_out(server: ChServer, client: object, db: str) -> None:
    client.command(f"CREATE TABLE {db}.r (k UInt32, s String) ENGINE = MergeTree ORDER BY k")  # type: ignore[attr-defined]
    body = b"".join(
        struct.pack("<I", k) + bytes([len(s)]) + s for k, s in [(7, b"seven"), (8, b"")]
    )
    client.raw_insert(f"{db}.r", ["k", "s"], body, fmt="RowBinary")  # type: ignore[attr-defined]
    raw = client.raw_query(  # type: ignore[attr-defined]
        f"SELECT k, s FROM {db}.r ORDER BY k", fmt="RowBinaryWithNamesAndTypes"
    )
    header = b"\x02\x01k\x01s\x06UInt32\x06String"
    assert raw == header + body
    assert next(s for s in server.seen if s.kind == "insert_data").sql.startswith("INSERT INTO")


def test_query_parameters_and_settings(client: object) -> None:
    got = client.query(  # type: ignore[attr-defined]
        "SELECT {s:String} AS s, {n:UInt8} + 1 AS n, getSetting('max_threads') AS t",
        parameters={"s": "it's", "n": 4},
        settings={"max_threads": 3},
    ).result_rows
    assert got == [("it's", 5, 3)]
    with pytest.raises(DatabaseError) as err:
        client.query("SELECT 1", settings={"no_such_setting_x": 1})  # type: ignore[attr-defined]
    assert err.value.code == 115


def test_errors_come_in_clickhouse_shape(server: ChServer) -> None:
    status, headers, body = _post(server, "", b"SELECT * FROM no_db_x.no_table")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "81")
    assert body.startswith(b"Code: 81. DB::Exception: ") and b"(version " in body
    status, headers, body = _post(server, "", b"SELEC 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    status, headers, body = _post(server, "database=no_db_y", b"SELECT 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "81")
    status, headers, body = _post(server, "", b"SELECT 1", auth=False)
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516")
    status, headers, body = _post(server, "query=SELECT%2042%20AS%20x&default_format=CSV")
    assert (status, body, headers["X-ClickHouse-Format"]) == (200, b"42\n", "CSV")
    assert "X-ClickHouse-Summary" in headers


def test_sessions_keep_use_and_set(server: ChServer, client: object, db: str) -> None:
    client.command(f"CREATE TABLE {db}.s (k UInt8) ENGINE = Memory")  # type: ignore[attr-defined]
    client.command("USE " + db)  # type: ignore[attr-defined]
    client.command("SET max_block_size = 4321")  # type: ignore[attr-defined]
    got = client.query("SELECT count(), getSetting('max_block_size') FROM s").result_rows  # type: ignore[attr-defined]
    assert got == [(0, 4321)]
    status, headers, _ = _post(server, "session_id=nobody&session_check=1", b"SELECT 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "372")
    # without a session nothing is remembered
    status, _, body = _post(server, "", b"SELECT getSetting('max_block_size') = 4321")
    assert (status, body) == (200, b"0\n")


def test_the_password_is_checked_and_never_echoed(server: ChServer) -> None:
    backend = ServerBackend("127.0.0.1", server.port, USER, "wrong-password-123")
    with pytest.raises(QueryFailed) as err:
        backend.query("SELECT 1")
    assert "Authentication failed" in str(err.value)
    assert "check the ClickHouse username and password" in str(err.value)
    assert "wrong-password-123" not in str(err.value)
    assert not err.value.retryable
    backend.close()


def test_use_is_honoured_without_a_session(server: ChServer, db: str) -> None:
    server.seen.clear()
    backend = ServerBackend("127.0.0.1", server.port, USER, PASSWORD)
    try:
        backend.command(f"CREATE TABLE {db}.u (k UInt8) ENGINE = Memory")
        backend.command(f"INSERT INTO {db}.u VALUES (1), (2)")
        backend.command(f"USE {db}")  # what `gridstream query` does
        assert backend.query("SELECT sum(k) FROM u").rows == [(3,)]
        with pytest.raises(QueryFailed, match="Database no_db_z does not exist"):
            backend.command("USE no_db_z")
    finally:
        backend.close()
    assert all("session_id" not in s.params for s in server.seen)


# ------------------------------------------------------------------- outages and bad answers


def _backend(server: ChServer, timeout: float = 30.0) -> ServerBackend:
    return ServerBackend(
        "127.0.0.1", server.port, USER, PASSWORD, connect_timeout=2, send_receive_timeout=timeout
    )


def test_refused_connections_are_retryable_and_it_recovers(own_server: ChServer) -> None:
    backend = _backend(own_server)
    assert backend.query("SELECT 1").rows == [(1,)]
    own_server.refuse()
    with pytest.raises(SinkUnavailable) as err:
        backend.query("SELECT 2")
    assert err.value.retryable
    assert f"127.0.0.1:{own_server.port}" in str(err.value)
    own_server.serve()
    assert backend.query("SELECT 3").rows == [(3,)]  # same backend, same port, back in business
    backend.close()


def test_refused_at_first_connect_then_recovers(own_server: ChServer) -> None:
    own_server.refuse()
    backend = _backend(own_server)
    with pytest.raises(SinkUnavailable, match="connect"):
        backend.query("SELECT 1")
    own_server.serve()
    assert backend.query("SELECT 4").rows == [(4,)]
    backend.close()


def test_a_hanging_server_times_out_within_the_configured_bound(own_server: ChServer) -> None:
    backend = _backend(own_server, timeout=1.0)
    assert backend.query("SELECT 1").rows == [(1,)]
    own_server.hang()
    with pytest.raises(SinkUnavailable) as err:
        backend.query("SELECT 2")
    assert "timed out" in str(err.value).lower()
    assert backend.client().timeout.read_timeout == 1.0  # the bound applied, not rounded
    own_server.serve()
    assert backend.query("SELECT 5").rows == [(5,)]
    backend.close()


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        (0, 502, "Bad Gateway", SinkUnavailable),  # a proxy with the server behind it down
        (0, 503, "Service Unavailable", SinkUnavailable),
        (
            252,
            500,
            "Too many parts (300). Merges are processing significantly slower",
            SinkUnavailable,
        ),
        (241, 500, "Memory limit (total) exceeded", SinkUnavailable),
        (209, 503, "Timeout exceeded while reading from socket", SinkUnavailable),
        (252, 500, "Too many partitions for single INSERT block (more than 100)", QueryFailed),
        (60, 404, "Table gridstream.forecasts does not exist", QueryFailed),
        (62, 400, "Syntax error", QueryFailed),
        (0, 400, "Bad Request", QueryFailed),
    ],
)
def test_error_answers_are_classified(
    own_server: ChServer, code: int, status: int, message: str, expected: type[SinkError]
) -> None:
    backend = _backend(own_server)
    sink = ClickHouseSink(backend, "gs_never_created")
    backend.query("SELECT 1")  # connected before the server turns bad
    own_server.fail(code, message, status=status)
    batch = ForecastBatch(
        np.array(["m1"], dtype=object),
        np.array(["meter"], dtype=object),
        np.array([T0]),
        np.array([900]),
        np.array([T0 + 900_000]),
        np.array([1.0]),
        np.array([2.0]),
        np.array([3.0]),
        "m@1",
    )
    with pytest.raises(SinkError) as err:
        sink.write(batch, [], [], now_ms=T0)
    assert type(err.value) is expected
    assert err.value.table == "forecasts"
    assert "gs_never_created.forecasts" in str(err.value)
    backend.close()


def test_a_lost_acknowledgement_does_not_double_rows(own_server: ChServer, unique: str) -> None:
    """The insert ran but its answer never came: whoever retries, the rows are there once."""
    backend = _backend(own_server)
    sink = ClickHouseSink(backend, f"gs_ack_{unique}")
    sink.ensure_schema()
    batch = ForecastBatch(
        np.array(["m1", "m2"], dtype=object),
        np.array(["meter", "meter"], dtype=object),
        np.array([T0, T0]),
        np.array([900, 900]),
        np.array([T0 + 900_000] * 2),
        np.array([1.0, 1.0]),
        np.array([2.0, 2.0]),
        np.array([3.0, 3.0]),
        "m@1",
    )
    count = f"SELECT count() FROM gs_ack_{unique}.forecasts"  # no FINAL: what is stored
    try:
        own_server.lose_replies(1)
        with pytest.raises(SinkUnavailable, match="Remote end closed connection"):
            sink.write(batch, [], [], now_ms=T0)
        assert backend.query(count).rows == [(2,)]  # it was written all the same
        insert = next(s for s in own_server.seen if s.kind == "insert_data")
        assert insert.params["insert_deduplication_token"].startswith("gs-forecasts-2-")
        sink.write(batch, [], [], now_ms=T0)  # the runner's retry: same batch, same stamp
        sink.write(batch, [], [], now_ms=T0 + 1)  # a replay after a restart
        assert backend.query(count).rows == [(2,)]
    finally:
        backend.command(f"DROP DATABASE IF EXISTS gs_ack_{unique}")
        backend.close()
