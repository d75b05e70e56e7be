"""Build the I/O pieces from settings: the one place that turns configuration into clients."""

from __future__ import annotations

from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend, ClickHouseBackend, ServerBackend
from sinks.ddl import Retention
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
        async_insert=ch.async_insert,
    )


def retention(settings: Settings) -> Retention:
    ch = settings.clickhouse
    return Retention(
        readings_days=ch.readings_ttl_days,
        forecasts_days=ch.forecasts_ttl_days,
        anomalies_days=ch.anomalies_ttl_days,
        drift_events_days=ch.drift_events_ttl_days,
        dead_letters_days=ch.dead_letters_ttl_days,
    )


def clickhouse_sink(settings: Settings, backend: ClickHouseBackend | None = None
                    ) -> ClickHouseSink | None:
    """The configured sink (on ``backend`` if given), or None when ClickHouse is off."""
    backend = backend or clickhouse_backend(settings)
    if backend is None:
        return None
    return ClickHouseSink(backend, settings.clickhouse.database, retention=retention(settings),
                          store_readings=settings.clickhouse.store_readings,
                          cluster=settings.clickhouse.cluster)
