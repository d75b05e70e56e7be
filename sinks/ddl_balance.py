"""The ``energy_balance`` table (one row per parent and interval) and its worst-parents view.

Kept beside ``sinks.ddl`` (which appends its migration) so that module stays within its size.
Natural key (parent_kind, parent_id, interval_start): a replayed interval replaces its row,
newest ``written_at`` winning, like every other table.
"""

from __future__ import annotations

from sinks.ddl_types import DB, Column, Table

_TS = "DateTime64(3, 'UTC')"
_LC = "LowCardinality(String)"
_F = "Float64"

ENERGY_BALANCE = Table(
    name="energy_balance",
    columns=(
        Column("parent_id", "String"),
        Column("parent_kind", _LC),
        Column("interval_start", _TS, "DoubleDelta, ZSTD"),
        Column("parent_kwh", _F, "Gorilla, ZSTD"),
        Column("children_kwh", _F, "Gorilla, ZSTD"),  # registered plus estimated
        Column("estimated_kwh", _F),  # the part estimated for children without a reading
        Column("expected_loss_kwh", _F),
        Column("residual_kwh", _F),  # parent - children - expected loss
        Column("loss_ratio", _F),
        Column("expected_ratio", _F),
        Column("deviation", _F),  # residual in its own scales
        Column("log10p", _F),
        Column("children", "UInt32"),
        Column("missing", "UInt32"),  # children estimated
        Column("alarm", "Bool"),
        Column("suspects", "String"),  # JSON list of the top suspects while alarming
        Column("written_at", _TS),
    ),
    engine="ReplacingMergeTree(written_at)",
    order_by=("parent_kind", "parent_id", "interval_start"),
    partition_by="toYYYYMM(interval_start)",
    ttl_column="interval_start",
    settings=("ttl_only_drop_parts = 1",),
)

# Per parent over the last 7 days of its rows: the unexplained share of its energy, alarms, and
# the suspects of its latest alarming interval; worst first.
WORST_PARENTS_SELECT = f"""
SELECT parent_kind, parent_id,
       count() AS intervals,
       sum(parent_kwh) AS energy_kwh,
       sum(residual_kwh) / nullIf(sum(parent_kwh), 0) AS unexplained_ratio,
       avg(loss_ratio) AS loss_ratio,
       avg(expected_ratio) AS expected_ratio,
       countIf(alarm) AS alarming_intervals,
       minIf(interval_start, alarm) AS first_alarm,
       argMaxIf(suspects, interval_start, alarm) AS suspects
FROM {DB}.energy_balance FINAL
WHERE interval_start >= (SELECT max(interval_start) FROM {DB}.energy_balance) - INTERVAL 7 DAY
GROUP BY parent_kind, parent_id
ORDER BY alarming_intervals DESC, unexplained_ratio DESC"""
