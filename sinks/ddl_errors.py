"""``forecast_errors`` (each forecast the processor matched with its actual) and its MAPE rollup.

Kept beside ``sinks.ddl`` (which appends the migration) so that module stays within its size.
The processor writes a row as ``streams.ops.accuracy`` matches a forecast, so MAPE no longer
needs the ASOF join of ``forecasts`` with ``readings`` that did not scale (docs/clickhouse.md).

Natural key (entity_kind, entity_id, horizon_s, target_ts): a copy collapses under ``FINAL``.
The rollup ``forecast_mape_agg`` holds compact sums per hour, kind and horizon, filled by a
materialized view. Sums are not idempotent, so it relies on two things, both tested:

- a batch written again (a retry, a crash before the offset commit) carries the same insert
  deduplication token; the engine drops it from ``forecast_errors`` and, by the token derived
  from it, from the rollup (which keeps a deduplication window for that);
- readings replayed to rebuild state after a restore update the tracker without reporting
  matches (``streams.state.tasks``), so a replay never emits an error row a second time.
"""

from __future__ import annotations

from sinks.ddl_types import DB, Column, Table

_TS = "DateTime64(3, 'UTC')"
_LC = "LowCardinality(String)"
_F = "Float64"
_FC = "Gorilla, ZSTD"

FORECAST_ERRORS = Table(
    name="forecast_errors",
    columns=(
        Column("entity_id", "String"),
        Column("entity_kind", _LC),
        Column("target_ts", _TS, "DoubleDelta, ZSTD"),
        Column("horizon_s", "UInt32"),
        Column("p10", _F, _FC),
        Column("p50", _F, _FC),
        Column("p90", _F, _FC),
        Column("actual", _F, _FC),
        Column("abs_error", _F, _FC),
        Column("pct_error", _F, _FC),  # percent; NaN where the actual is 0 (no percentage)
        Column("written_at", _TS),
    ),
    engine="ReplacingMergeTree(written_at)",
    order_by=("entity_kind", "entity_id", "horizon_s", "target_ts"),
    partition_by="toYYYYMM(target_ts)",
    ttl_column="target_ts",
    settings=("ttl_only_drop_parts = 1",),
)

FORECAST_MAPE_AGG = Table(
    name="forecast_mape_agg",
    columns=(
        Column("hour", "DateTime('UTC')"),
        Column("entity_kind", _LC),
        Column("horizon_s", "UInt32"),
        Column("forecasts", "SimpleAggregateFunction(sum, UInt64)"),
        Column("entities", "AggregateFunction(uniqExact, String)"),
        Column("pct_sum", "SimpleAggregateFunction(sum, Float64)"),
        Column("pct_n", "SimpleAggregateFunction(sum, UInt64)"),
        Column("abs_sum", "SimpleAggregateFunction(sum, Float64)"),
        Column("in_band", "SimpleAggregateFunction(sum, UInt64)"),
    ),
    engine="AggregatingMergeTree",
    order_by=("hour", "entity_kind", "horizon_s"),
    partition_by="toYYYYMM(hour)",
    # the view's insert carries a token derived from the source insert's: with a window of its
    # own the rollup drops a repeated batch too (the source's dropping it is not enough: chDB
    # 26.9 still pushes the block through the view)
)

_MAPE_ROLLUP_SELECT = (
    "SELECT toStartOfHour(target_ts) AS hour, entity_kind, horizon_s, "
    "toUInt64(count()) AS forecasts, uniqExactState(entity_id) AS entities, "
    "sumIf(pct_error, isFinite(pct_error)) AS pct_sum, "
    "toUInt64(countIf(isFinite(pct_error))) AS pct_n, sum(abs_error) AS abs_sum, "
    "toUInt64(countIf(actual >= p10 AND actual <= p90)) AS in_band "
    "FROM {src} GROUP BY hour, entity_kind, horizon_s"
)

STATEMENTS: tuple[str, ...] = (
    FORECAST_ERRORS.create_sql(),
    FORECAST_MAPE_AGG.create_sql(),
    f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DB}.`forecast_mape_agg_mv` "
    f"TO {DB}.`forecast_mape_agg` AS " + _MAPE_ROLLUP_SELECT.format(src=f"{DB}.`forecast_errors`"),
)


def mape_select(alert_pct: float, where: str = "") -> str:
    """The MAPE views' query over the rollup: same names and columns as before it existed
    (the inner names differ from the outer ones, which ClickHouse would resolve as aliases)."""
    return f"""
SELECT toDateTime64(h, 0, 'UTC') AS hour, k AS entity_kind, hz AS horizon_s,
       n AS forecasts, e AS entities,
       if(pn = 0, NULL, ps / pn) AS mape_pct, abs_total / n AS mae,
       band / n AS p10_p90_coverage, mape_pct > {alert_pct} AS above_2pct
FROM (
    SELECT hour AS h, entity_kind AS k, horizon_s AS hz, sum(forecasts) AS n,
           uniqExactMerge(entities) AS e, sum(pct_sum) AS ps, sum(pct_n) AS pn,
           sum(abs_sum) AS abs_total, sum(in_band) AS band
    FROM {DB}.forecast_mape_agg{where}
    GROUP BY hour, entity_kind, horizon_s
)"""
