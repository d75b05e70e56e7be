"""Views for the questions analysts ask first, correct before and after background merges.

Every view reads its tables ``FINAL``: a ReplacingMergeTree holds one row per natural key only
after a merge, and a replayed batch that escaped insert deduplication must not count twice.
Plain views, not materialized ones, on purpose: a materialized view aggregates each insert as it
arrives and cannot see that a later row replaces an earlier one.

Views hold no data, so they are (re)created at every start with ``CREATE OR REPLACE VIEW`` and a
new gridstream version changes them without a migration. ``CREATE OR REPLACE`` would also replace a
*table* of the same name, data and all; the sink refuses to start instead (``SchemaMismatch``).

Definitions:

- ``load_hourly`` / ``load_daily``: per entity and UTC hour/day, readings and min/avg/max/p95 of
  active power (``unit`` kW for meters, MW for SCADA assets); non-finite values left out.
  p95 is ``quantile(0.95)``: linear interpolation, exact up to 8192 readings per group.
- ``forecast_accuracy``: every finite forecast with its actual reading — the rule of
  ``schemas.accuracy``, shared with ``/metrics`` and the demo: the first reading of the entity at
  or after ``target_ts`` and less than ``ACTUAL_TOLERANCE_S`` after it (grid-stamped meters match
  exactly, SCADA jitter is tolerated) — with absolute error, percentage error (NULL when the
  actual is 0) and whether the actual fell in [p10, p90]. Forecasts not yet due or whose
  reading never came are not in it.
- ``forecast_mape_hourly``: read from the ``forecast_mape_agg`` rollup of ``forecast_errors``
  (the matches the processor writes, ``sinks.ddl_errors``), not from the join above.
  Per UTC hour of the target time, entity kind and horizon: MAPE (mean
  of the percentage errors, zero actuals skipped), MAE, p10–p90 coverage, and ``above_2pct``,
  the operators' alert rule (MAPE > 2 %).
- ``anomaly_counts_daily``: per UTC day, severity and kind: events and distinct entities. The
  kind of an anomaly is its top explanation feature — the one with the largest deviation, e.g.
  ``kw``, ``kw_vs_time_of_day``, ``identical_readings``, ``voltage_kv`` — because it names what
  went wrong on the grid and stays stable when the detector ensemble changes ("which detectors
  fired" is in ``anomalies.fired``). An event without explanation has kind ``unexplained``.
- ``top_anomalous_entities``: per entity: events by severity, max score, first and last event,
  most frequent kind; ordered critical first.
- ``energy_balance_worst``: per parent over the last 7 days of ``energy_balance``: intervals,
  energy, unexplained share (residual over parent energy), mean loss and expected ratios,
  alarming intervals, the first alarm and the suspects of the latest alarming interval; parents
  with most alarming intervals first.
- ``dead_letters_daily``: per UTC day, source topic and error class: dead letters and the error
  text of the first one (lowest offset).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.accuracy import ACTUAL_TOLERANCE_S
from sinks.ddl import ANOMALY_KIND, DB
from sinks.ddl_balance import WORST_PARENTS_SELECT
from sinks.ddl_errors import mape_select

MAPE_ALERT_PCT = 2.0


@dataclass(frozen=True, slots=True)
class View:
    name: str
    comment: str
    select: str  # with {db} placeholders

    def create_sql(self) -> str:
        comment = self.comment.replace("\\", "\\\\").replace("'", "\\'")
        return f"CREATE OR REPLACE VIEW {DB}.`{self.name}` AS {self.select} COMMENT '{comment}'"


# Hours as DateTime64: a plain DateTime reaches Python through Arrow as bare epoch seconds.
_HOUR = "toDateTime64(toStartOfHour({}), 0, 'UTC')"
_KIND = ANOMALY_KIND


def _load(period: str, expr: str) -> str:
    """Load per entity and period from the hourly rollup: its point sets merged per period."""
    return f"""
SELECT entity_kind, entity_id, unit, {period},
       length(v) AS readings,
       arrayMin(v) AS min_load, arrayAvg(v) AS avg_load, arrayMax(v) AS max_load,
       arrayReduce('quantile(0.95)', v) AS p95_load
FROM (
    SELECT entity_kind, entity_id, unit, {expr} AS {period},
           arrayMap(p -> p.2, groupUniqArrayMerge(points)) AS v
    FROM {DB}.load_hourly_agg
    GROUP BY entity_kind, entity_id, unit, {period}
)"""


LOAD_HOURLY = View(
    "load_hourly",
    "per entity and UTC hour: min/avg/max/p95 active power",
    _load("hour", "toDateTime64(hour, 0, 'UTC')"),
)
LOAD_DAILY = View(
    "load_daily",
    "per entity and UTC day: min/avg/max/p95 active power",
    _load("day", "toDate(hour)"),
)


def _accuracy(forecast_filter: str = "", reading_filter: str = "") -> str:
    return f"""
SELECT f.entity_kind AS entity_kind, f.entity_id AS entity_id, f.horizon_s AS horizon_s,
       f.issued_at AS issued_at, f.target_ts AS target_ts, r.ts AS actual_ts,
       f.p10 AS p10, f.p50 AS p50, f.p90 AS p90, r.value AS actual, f.unit AS unit,
       f.model AS model,
       abs(f.p50 - r.value) AS abs_error,
       if(r.value = 0, NULL, 100 * abs(f.p50 - r.value) / abs(r.value)) AS pct_error,
       r.value >= f.p10 AND r.value <= f.p90 AS in_p10_p90
FROM (
    SELECT entity_kind, entity_id, horizon_s, issued_at, target_ts, p10, p50, p90, unit, model
    FROM {DB}.forecasts FINAL
    WHERE isFinite(p50){forecast_filter}
) AS f
ASOF INNER JOIN (
    SELECT entity_kind, entity_id, ts, value
    FROM {DB}.readings FINAL
    WHERE isFinite(value){reading_filter}
) AS r
ON f.entity_kind = r.entity_kind AND f.entity_id = r.entity_id AND f.target_ts <= r.ts
WHERE r.ts < f.target_ts + toIntervalSecond({ACTUAL_TOLERANCE_S})"""


FORECAST_ACCURACY = View(
    "forecast_accuracy",
    "every forecast with the actual reading at its target time, absolute and percentage error",
    _accuracy(),
)

FORECAST_MAPE_HOURLY = View(
    "forecast_mape_hourly",
    "per UTC hour of target time, entity kind and horizon: MAPE; above_2pct is the alert rule",
    mape_select(MAPE_ALERT_PCT),
)

# The same questions over a range of target times, as parameterised views:
#   SELECT * FROM forecast_mape_hourly_between(start = '2026-11-01', end = '2026-11-02')
# Only forecasts issued in [start - MAX_HORIZON_DAYS, end) and readings in [start, end + the
# tolerance) are read (partitions outside are pruned), so the join's memory follows the range,
# not the table: the unbounded views above hold every reading of the table in memory.
MAX_HORIZON_DAYS = 7
_START, _END = "{start:DateTime64(3, 'UTC')}", "{end:DateTime64(3, 'UTC')}"
_RANGE_FORECASTS = (
    f" AND target_ts >= {_START} AND target_ts < {_END}"
    f" AND issued_at >= {_START} - toIntervalDay({MAX_HORIZON_DAYS}) AND issued_at < {_END}"
)
_RANGE_READINGS = f" AND ts >= {_START} AND ts < {_END} + toIntervalSecond({ACTUAL_TOLERANCE_S})"

FORECAST_ACCURACY_BETWEEN = View(
    "forecast_accuracy_between",
    "forecast_accuracy for target times in [start, end): parameters start, end",
    _accuracy(_RANGE_FORECASTS, _RANGE_READINGS),
)

FORECAST_MAPE_HOURLY_BETWEEN = View(
    "forecast_mape_hourly_between",
    "forecast_mape_hourly for target hours in [start, end): parameters start, end",
    mape_select(MAPE_ALERT_PCT, f" WHERE hour >= toStartOfHour({_START}) AND hour < {_END}"),
)

ANOMALY_COUNTS_DAILY = View(
    "anomaly_counts_daily",
    "per UTC day, severity and kind (top explanation feature): anomaly events and entities",
    f"""
SELECT day, severity, kind,
       uniqExactMerge(events) AS anomalies, uniqExactMerge(entities) AS entities,
       max(max_score) AS max_score
FROM {DB}.anomaly_counts_agg
GROUP BY day, severity, kind""",
)

TOP_ANOMALOUS_ENTITIES = View(
    "top_anomalous_entities",
    "per entity: anomaly events by severity, max score, first/last, most frequent kind",
    f"""
SELECT entity_kind, entity_id,
       sum(n) AS anomalies, sum(n_critical) AS critical, sum(n_warning) AS warning,
       sum(n_info) AS info, max(top_score) AS max_score,
       min(first) AS first_ts, max(last) AS last_ts,
       argMax(kind, (n, kind)) AS top_kind
FROM (
    SELECT entity_kind, entity_id, {_KIND} AS kind, count() AS n,
           countIf(severity = 'critical') AS n_critical,
           countIf(severity = 'warning') AS n_warning,
           countIf(severity = 'info') AS n_info,
           max(score) AS top_score, min(ts) AS first, max(ts) AS last
    FROM {DB}.anomalies FINAL
    GROUP BY entity_kind, entity_id, kind
)
GROUP BY entity_kind, entity_id
ORDER BY critical DESC, anomalies DESC, max_score DESC, entity_kind, entity_id""",
)

DEAD_LETTERS_DAILY = View(
    "dead_letters_daily",
    "per UTC day, source topic and error class: dead letters and the first error text",
    f"""
SELECT toDate(dead_lettered_at) AS day, source_topic, error_class,
       count() AS dead_letters, argMin(error, source_offset) AS first_error
FROM {DB}.dead_letters FINAL
GROUP BY day, source_topic, error_class""",
)

ENERGY_BALANCE_WORST = View(
    "energy_balance_worst",
    "per parent, last 7 days of energy_balance: unexplained share of energy, alarms, suspects",
    WORST_PARENTS_SELECT,
)

VIEWS: tuple[View, ...] = (
    LOAD_HOURLY,
    LOAD_DAILY,
    FORECAST_ACCURACY,
    FORECAST_MAPE_HOURLY,
    ANOMALY_COUNTS_DAILY,
    TOP_ANOMALOUS_ENTITIES,
    DEAD_LETTERS_DAILY,
)
# Parameterised (``start``, ``end``): queried as table functions, ``FROM v(start=..., end=...)``.
RANGE_VIEWS: tuple[View, ...] = (FORECAST_ACCURACY_BETWEEN, FORECAST_MAPE_HOURLY_BETWEEN)
# Over the energy balance's own table (tests/integration/test_energy_balance_table.py).
BALANCE_VIEWS: tuple[View, ...] = (ENERGY_BALANCE_WORST,)
ALL_VIEWS: tuple[View, ...] = (*VIEWS, *RANGE_VIEWS, *BALANCE_VIEWS)
