"""Shared fixtures: the real embedded broker and a real chDB data directory, no mocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.tools.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded Kafka-compatible broker for the session; tests use fresh topics and groups."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture
def bootstrap(broker: EmbeddedBroker) -> str:
    return broker.bootstrap


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and database names of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB data directory of this test process (chDB allows one path per process)."""
    return tmp_path_factory.mktemp("chdb")


# ---------------------------------------------------------------- ClickHouse: both backends
# The server path is real too: clickhouse-connect talks HTTP to a test-only endpoint
# (tests/chserver) that executes every request in this process's chDB.


@pytest.fixture(scope="session")
def chserver(chdb_path: Path) -> Iterator[object]:
    """One ClickHouse HTTP endpoint for the session, executing in the session's chDB."""
    from sinks.clickhouse_backend import ChdbBackend
    from tests.chserver import PASSWORD, USER, ChServer

    backend = ChdbBackend(chdb_path)
    with ChServer(backend, username=USER, password=PASSWORD) as server:
        yield server
    backend.close()


@pytest.fixture(params=["chdb", "server"])
def ch_backend(request: pytest.FixtureRequest, chdb_path: Path) -> Iterator[object]:
    """The same tests against embedded chDB and against clickhouse-connect over HTTP."""
    from sinks.clickhouse_backend import ChdbBackend, ServerBackend
    from tests.chserver import PASSWORD, USER

    if request.param == "chdb":
        backend: ChdbBackend | ServerBackend = ChdbBackend(chdb_path)
    else:
        server = request.getfixturevalue("chserver")
        backend = ServerBackend(
            "127.0.0.1",
            server.port,
            USER,
            PASSWORD,
            connect_timeout=5,
            send_receive_timeout=60,
        )
    yield backend
    backend.close()
