"""Build the I/O pieces from settings: the one place that turns configuration into clients."""

from __future__ import annotations

from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend, ClickHouseBackend, ServerBackend
from streams.config import Settings


def clickhouse_backend(settings: Settings) -> ClickHouseBackend | None:
    """The configured backend, or None when ClickHouse output is switched off."""
    ch = settings.clickhouse
    if ch.backend == "none":
        return None
    if ch.backend == "chdb":
        return ChdbBackend(ch.path)
    return ServerBackend(
        host=ch.host,
        port=ch.port,
        username=ch.username,
        password=ch.secret(),
        database="default",  # ours may not exist yet; the sink qualifies every table
        secure=ch.secure,
        verify=ch.verify,
        connect_timeout=ch.connect_timeout_s,
        send_receive_timeout=ch.send_receive_timeout_s,
    )


def clickhouse_sink(settings: Settings) -> ClickHouseSink | None:
    backend = clickhouse_backend(settings)
    return None if backend is None else ClickHouseSink(backend, settings.clickhouse.database)
