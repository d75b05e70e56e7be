"""ClickHouse as servers are run: an owner migrates, the processor runs as a user that may only
INSERT, an analyst queries with SELECT only. On the server path (clickhouse-connect over HTTP to
the test endpoint), whose users and privileges are checked before chDB executes anything
(``tests.chserver.grants``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.batch import ForecastBatch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend, ServerBackend
from sinks.ddl import LATEST_VERSION, Retention
from sinks.exceptions import QueryFailed
from tests.chserver import PASSWORD, USER, ChServer, User
from tests.chserver.grants import needed
from tests.integration.helpers import committed, produce

pytestmark = pytest.mark.integration

WRITER, WRITER_PASSWORD = "gridstream_writer", "w-Secret-1"
ANALYST, ANALYST_PASSWORD = "analyst", "a-Secret-2"
T0 = 1_718_000_000_000


@pytest.fixture
def server(chdb_path: Path) -> Iterator[ChServer]:
    backend = ChdbBackend(chdb_path)
    users = {
        WRITER: User(WRITER_PASSWORD, frozenset({"insert"})),
        ANALYST: User(ANALYST_PASSWORD, frozenset({"select"})),
    }
    with ChServer(backend, username=USER, password=PASSWORD, users=users) as srv:
        yield srv
    backend.close()


def _backend(server: ChServer, user: str, password: str) -> ServerBackend:
    return ServerBackend("127.0.0.1", server.port, user, password, connect_timeout=5)


def _batch(n: int) -> ForecastBatch:
    issued = T0 + np.arange(n, dtype=np.int64) * 900_000
    return ForecastBatch(
        np.array([f"m-{i % 3}" for i in range(n)], dtype=object),
        np.array(["meter"] * n, dtype=object),
        issued,
        np.full(n, 900, dtype=np.int64),
        issued + 900_000,
        np.ones(n),
        np.full(n, 2.0),
        np.full(n, 3.0),
        "m@1",
    )


def _count(server: ChServer, database: str, table: str) -> int:
    owner = _backend(server, USER, PASSWORD)
    try:
        return int(owner.query(f"SELECT count() FROM `{database}`.`{table}` FINAL").rows[0][0])
    finally:
        owner.close()


def _env(server: ChServer, database: str, user: str, password: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env.update(
        GRIDSTREAM_CLICKHOUSE__BACKEND="server",
        GRIDSTREAM_CLICKHOUSE__HOST="127.0.0.1",
        GRIDSTREAM_CLICKHOUSE__PORT=str(server.port),
        GRIDSTREAM_CLICKHOUSE__USERNAME=user,
        GRIDSTREAM_CLICKHOUSE__PASSWORD=password,
        GRIDSTREAM_CLICKHOUSE__DATABASE=database,
        **extra,
    )
    return env


def _cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_endpoint_refuses_what_a_user_has_no_grant_for(server: ChServer, unique: str) -> None:
    owner = _backend(server, USER, PASSWORD)
    owner.command(f"CREATE DATABASE p_{unique}")
    owner.command(f"CREATE TABLE p_{unique}.t (x Int32) ENGINE = MergeTree ORDER BY x")
    writer, analyst = _backend(server, WRITER, WRITER_PASSWORD), _backend(server, ANALYST, "x")
    try:
        with pytest.raises(QueryFailed, match="ACCESS_DENIED"):
            writer.command(f"CREATE TABLE p_{unique}.u (x Int32) ENGINE = Memory")
        with pytest.raises(QueryFailed, match="ACCESS_DENIED"):
            writer.query(f"SELECT * FROM p_{unique}.t")
        assert writer.query("SELECT 1").rows == [(1,)]  # no table: no grant needed
        with pytest.raises(QueryFailed, match="password is incorrect"):
            analyst.query("SELECT 1")
    finally:
        for b in (owner, writer, analyst):
            b.close()
    assert needed("ALTER TABLE d.t MODIFY TTL ts") == "ddl"
    assert needed("SELECT name FROM system.tables WHERE database = 'd'") is None
    assert needed("SELECT count() FROM `d`.`t` FINAL") == "select"
    assert needed("INSERT INTO d.t FORMAT Native") == "insert"


def test_migrate_as_owner_then_write_as_an_insert_only_user(server: ChServer, unique: str) -> None:
    database = f"p_{unique}"
    owner = ClickHouseSink(_backend(server, USER, PASSWORD), database)
    assert owner.ensure_schema() == LATEST_VERSION
    writer = ClickHouseSink(_backend(server, WRITER, WRITER_PASSWORD), database)
    start = len(server.seen)
    writer.verify_schema()  # reads system tables only
    writer.write(_batch(4), [], [], now_ms=T0)
    assert _count(server, database, "forecasts") == 4
    with pytest.raises(QueryFailed, match="ACCESS_DENIED"):
        writer.ensure_schema()  # the DDL is refused: this user really may only insert
    writers = [s for s in server.seen[start:] if s.user == WRITER and s.sql]
    assert {needed(s.sql) for s in writers[:-1]} <= {None, "insert"}
    for sink in (owner, writer):
        sink.backend.close()


def test_a_second_start_changes_nothing_and_rewrites_no_part(server: ChServer, unique: str) -> None:
    """Retention is applied when it changes, unmaterialised; an unchanged start runs no ALTER."""
    database = f"p_{unique}"
    backend = _backend(server, USER, PASSWORD)
    ClickHouseSink(backend, database, retention=Retention(forecasts_days=90)).ensure_schema()
    start = len(server.seen)
    ClickHouseSink(backend, database, retention=Retention(forecasts_days=90)).ensure_schema()
    again = [s.sql for s in server.seen[start:] if s.sql]
    assert again and not [sql for sql in again if sql.upper().startswith("ALTER")]
    start = len(server.seen)
    ClickHouseSink(backend, database, retention=Retention(forecasts_days=30)).ensure_schema()
    (alter,) = [s.sql for s in server.seen[start:] if s.sql.upper().startswith("ALTER")]
    assert "MODIFY TTL issued_at + toIntervalDay(30)" in alter
    assert "materialize_ttl_after_modify = 0" in alter
    backend.close()


def test_the_runtime_runs_as_an_insert_only_user_with_no_migrate(
    server: ChServer, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    database = f"p_{unique}"
    owner_env = _env(server, database, USER, PASSWORD)
    done = _cli(owner_env, "migrate")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"schema version {LATEST_VERSION}" in done.stdout
    topics = {
        f"GRIDSTREAM_TOPICS__{name.upper()}": f"{name}-{unique}"
        for name in ("meter", "scada", "forecasts", "anomalies", "dead_letters")
    }
    env = _env(
        server,
        database,
        WRITER,
        WRITER_PASSWORD,
        GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        GRIDSTREAM_KAFKA__GROUP_ID=f"g-{unique}",
        GRIDSTREAM_KAFKA__PARTITIONS="2",
        GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS="6000",
        GRIDSTREAM_HTTP_PORT="0",
        **topics,
    )
    refused = _cli(env, "run", timeout=60)  # migrating needs DDL: a clear stop, not a crash
    assert refused.returncode != 0 and "ACCESS_DENIED" in refused.stderr, refused.stderr[-2000:]
    meter = topics["GRIDSTREAM_TOPICS__METER"]
    start_ms = (int(time.time() * 1000) // 900_000 - 96) * 900_000
    records = [
        (
            f"m{i % 10}".encode(),
            orjson.dumps(
                {"meter_id": f"m{i % 10}", "ts": start_ms + (i // 10) * 900_000, "kw": 1.5}
            ),
        )
        for i in range(400)
    ]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(meter, 2, 1)]).values():
        future.result(30)
    produce(bootstrap, meter, records)
    first = len(server.seen)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "--no-migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(max(o, 0) for o in committed(bootstrap, f"g-{unique}", meter, 2)) >= 400:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert sum(max(o, 0) for o in committed(bootstrap, f"g-{unique}", meter, 2)) == 400
    assert _count(server, database, "readings") == 400
    assert _count(server, database, "forecasts") > 0
    by_writer = [s for s in server.seen[first:] if s.user == WRITER and s.sql]
    assert by_writer and {needed(s.sql) for s in by_writer} <= {None, "insert"}


def test_query_works_for_a_read_only_user(server: ChServer, unique: str) -> None:
    database = f"p_{unique}"
    owner = ClickHouseSink(_backend(server, USER, PASSWORD), database)
    owner.ensure_schema()
    owner.write(_batch(5), [], [], now_ms=T0)
    owner.backend.close()
    env = _env(server, database, ANALYST, ANALYST_PASSWORD)
    start = len(server.seen)
    done = _cli(env, "query", "SELECT count() AS n FROM forecasts FINAL")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "5" in done.stdout
    assert not [s for s in server.seen[start:] if needed(s.sql) == "ddl"]
    done = _cli(env, "query", "INSERT INTO forecasts (entity_id) VALUES ('x')")
    assert done.returncode != 0 and "ACCESS_DENIED" in done.stderr + done.stdout


def test_async_inserts_are_acknowledged_once_written(server: ChServer, unique: str) -> None:
    database = f"p_{unique}"
    ClickHouseSink(_backend(server, USER, PASSWORD), database).ensure_schema()
    backend = ServerBackend(
        "127.0.0.1", server.port, WRITER, WRITER_PASSWORD, connect_timeout=5, async_insert=True
    )
    start = len(server.seen)
    ClickHouseSink(backend, database).write(_batch(6), [], [], now_ms=T0)
    backend.close()
    (insert,) = [s for s in server.seen[start:] if s.kind == "insert_data"]
    assert insert.params["async_insert"] == "1" and insert.params["wait_for_async_insert"] == "1"
    assert _count(server, database, "forecasts") == 6  # written when acknowledged
