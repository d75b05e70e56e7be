"""ClickHouse at a utility's scale, in chDB: the analyst queries before and after the rollups.

Loads ``--forecast-rows`` forecasts (two horizons, 15 and 60 minutes) for ``--entities`` meters on
a 15-minute grid, the readings they forecast (half as many rows) and a few anomalies, through the
schema gridstream applies (so the rollups fill as the readings arrive), then times each analyst
question two ways:

- before: the query-time views as they were (raw tables with ``FINAL``, the whole-table ASOF
  join of forecasts against readings), their SQL kept here;
- after: the views as they are now (the hourly load rollup, the anomaly rollup, and MAPE from
  the ``forecast_mape_agg`` rollup of ``forecast_errors``, which is loaded here as the processor
  writes it: each forecast whose target has a reading, with that reading as its actual).

Every query runs with ``max_memory_usage`` = ``--max-memory-gb``: a query that needs more fails
with MEMORY_LIMIT_EXCEEDED and is reported as such, so memory stays bounded by construction.

    python -m benchmarks.clickhouse_scale                      # 100M forecasts, 100k entities
    python -m benchmarks.clickhouse_scale --forecast-rows 10000000 --entities 100000

Writes ``benchmarks/results/clickhouse_scale.json``. Timings are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from sinks.exceptions import SinkError

RESULTS = Path(__file__).resolve().parent / "results"
DB = "scale"
T0_S = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp())
STEP_S = 900

# The views of schema versions 1-3, as they were: re-aggregate the raw tables on every query.
OLD_LOAD = """
SELECT entity_kind, entity_id, unit, {expr} AS {period}, count() AS readings,
       min(value) AS min_load, avg(value) AS avg_load, max(value) AS max_load,
       quantile(0.95)(value) AS p95_load
FROM {db}.readings FINAL WHERE isFinite(value)
GROUP BY entity_kind, entity_id, unit, {period}"""
OLD_ACCURACY = """
SELECT f.entity_kind AS entity_kind, f.entity_id AS entity_id, f.horizon_s AS horizon_s,
       f.target_ts AS target_ts, abs(f.p50 - r.value) AS abs_error,
       if(r.value = 0, NULL, 100 * abs(f.p50 - r.value) / abs(r.value)) AS pct_error,
       r.value >= f.p10 AND r.value <= f.p90 AS in_p10_p90
FROM (SELECT entity_kind, entity_id, horizon_s, target_ts, p10, p50, p90
      FROM {db}.forecasts FINAL WHERE isFinite(p50)) AS f
ASOF INNER JOIN (SELECT entity_kind, entity_id, ts, value
                 FROM {db}.readings FINAL WHERE isFinite(value)) AS r
ON f.entity_kind = r.entity_kind AND f.entity_id = r.entity_id AND f.target_ts <= r.ts
WHERE r.ts < f.target_ts + toIntervalSecond(60)"""
OLD_MAPE = """
SELECT toDateTime64(toStartOfHour(target_ts), 0, 'UTC') AS hour, entity_kind, horizon_s,
       count() AS forecasts, avg(pct_error) AS mape_pct
FROM ({accuracy}) GROUP BY hour, entity_kind, horizon_s"""
OLD_ANOMALIES = """
SELECT toDate(ts) AS day, severity,
       if(JSONLength(explanation) > 0, JSONExtractString(explanation, 1, 'feature'),
          'unexplained') AS kind,
       count() AS anomalies, uniqExact(entity_kind, entity_id) AS entities
FROM {db}.anomalies FINAL GROUP BY day, severity, kind"""


def questions(day: str, entity: str) -> list[tuple[str, str, str]]:
    """(question, before SQL, after SQL): the README's analyst queries, for one day or entity."""
    load_hourly = OLD_LOAD.format(db=DB, expr="toStartOfHour(ts)", period="hour")
    load_daily = OLD_LOAD.format(db=DB, expr="toDate(ts)", period="day")
    mape = OLD_MAPE.format(accuracy=OLD_ACCURACY.format(db=DB))
    nxt = f"toDate('{day}') + 1"
    return [
        (
            "load of one meter, hourly, one day",
            f"SELECT * FROM ({load_hourly}) WHERE entity_id = '{entity}' "
            f"AND toDate(hour) = '{day}'",
            f"SELECT * FROM {DB}.load_hourly WHERE entity_id = '{entity}' "
            f"AND toDate(hour) = '{day}'",
        ),
        (
            "fleet load per kind, one day",
            f"SELECT entity_kind, count(), avg(avg_load), max(max_load) FROM ({load_daily}) "
            f"WHERE day = '{day}' GROUP BY entity_kind",
            f"SELECT entity_kind, count(), avg(avg_load), max(max_load) FROM {DB}.load_daily "
            f"WHERE day = '{day}' GROUP BY entity_kind",
        ),
        (
            "MAPE by hour and horizon, one day",
            f"SELECT * FROM ({mape}) WHERE toDate(hour) = '{day}' ORDER BY hour, horizon_s",
            f"SELECT * FROM {DB}.forecast_mape_hourly_between(start = '{day}', end = {nxt}) "
            "ORDER BY hour, horizon_s",
        ),
        (
            "anomaly counts per day",
            f"SELECT * FROM ({OLD_ANOMALIES.format(db=DB)}) ORDER BY day, severity, kind",
            f"SELECT * FROM {DB}.anomaly_counts_daily ORDER BY day, severity, kind",
        ),
    ]


def load(backend: ChdbBackend, entities: int, forecast_rows: int) -> dict[str, float]:
    steps = max(2, forecast_rows // (2 * entities))
    readings = entities * steps
    sink = ClickHouseSink(backend, DB)
    sink.ensure_schema()
    timings: dict[str, float] = {}
    chunk = 10_000_000  # rows per INSERT ... SELECT: bounded memory while loading
    t = time.perf_counter()
    for lo in range(0, readings, chunk):
        n = min(chunk, readings - lo)
        backend.command(
            f"INSERT INTO {DB}.readings (entity_id, entity_kind, ts, value, unit, written_at) "
            f"SELECT concat('m-', toString(k % {entities})) AS e, 'meter', "
            f"toDateTime64({T0_S} + intDiv(k, {entities}) * {STEP_S}, 3, 'UTC') AS ts, "
            f"2 + sin(intDiv(k, {entities}) * 6.2832 / 96) + (cityHash64(k) % 1000) / 2000, "
            f"'kW', ts FROM (SELECT {lo} + number AS k FROM numbers({n}))"
        )
    timings["load_readings_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for lo in range(0, forecast_rows, chunk):
        n = min(chunk, forecast_rows - lo)
        backend.command(
            f"INSERT INTO {DB}.forecasts (entity_id, entity_kind, issued_at, horizon_s, target_ts,"
            " p10, p50, p90, unit, model, written_at) "
            f"SELECT concat('m-', toString(r % {entities})), 'meter', "
            f"toDateTime64({T0_S} + intDiv(r, {entities}) * {STEP_S}, 3, 'UTC') AS issued, "
            "if(k % 2 = 0, 900, 3600) AS h, issued + toIntervalSecond(h), "
            "p50 * 0.8, 2 + sin(intDiv(r, "
            f"{entities}) * 6.2832 / 96) AS p50, p50 * 1.2, 'kW', 'nowcast@1', issued "
            f"FROM (SELECT {lo} + number AS k, intDiv(k, 2) AS r FROM numbers({n}))"
        )
    timings["load_forecasts_s"] = time.perf_counter() - t
    t = time.perf_counter()
    load_errors(backend, entities, forecast_rows, steps, chunk)
    timings["load_forecast_errors_s"] = time.perf_counter() - t
    backend.command(
        f"INSERT INTO {DB}.anomalies (event_id, entity_id, entity_kind, ts, score, severity, "
        "explanation, detected_at) SELECT toString(number), "
        f"concat('m-', toString(number * 7 % {entities})), 'meter', "
        f"toDateTime64({T0_S} + number * 60, 3, 'UTC') AS ts, 0.5 + (number % 50) / 100, "
        "['info', 'warning', 'critical'][number % 3 + 1], '[{\"feature\":\"kw\"}]', ts "
        f"FROM numbers({min(100_000, readings // 100)})"
    )
    timings["readings"] = float(readings)
    timings["forecasts"] = float(forecast_rows)
    timings["steps"] = float(steps)
    return timings


def load_errors(
    backend: ChdbBackend, entities: int, forecast_rows: int, steps: int, chunk: int
) -> None:
    """``forecast_errors`` as the processor's matcher writes them: the actual is the generated
    reading at the target step (same formula as the readings), so the rollup fills by its view."""
    actual = (
        f"2 + sin(ts_step * 6.2832 / 96) + (cityHash64(ts_step * {entities} + e) % 1000) / 2000"
    )
    for lo in range(0, forecast_rows, chunk):
        n = min(chunk, forecast_rows - lo)
        backend.command(
            f"INSERT INTO {DB}.forecast_errors (entity_id, entity_kind, target_ts, horizon_s, p10,"
            " p50, p90, actual, abs_error, pct_error, written_at) "
            "SELECT concat('m-', toString(e)), 'meter', "
            f"toDateTime64({T0_S} + ts_step * {STEP_S}, 3, 'UTC') AS target, h, p50 * 0.8, p50, "
            f"p50 * 1.2, {actual} AS a, abs(p50 - a), 100 * abs(p50 - a) / abs(a), target "
            f"FROM (SELECT {lo} + number AS k, intDiv(k, 2) AS r, r % {entities} AS e, "
            "if(k % 2 = 0, 900, 3600) AS h, "
            f"intDiv(r, {entities}) + intDiv(h, {STEP_S}) AS ts_step, "
            f"2 + sin(intDiv(r, {entities}) * 6.2832 / 96) AS p50 FROM numbers({n})) "
            f"WHERE ts_step < {steps}"
        )


def timed(backend: ChdbBackend, sql: str, max_memory: int) -> dict[str, object]:
    t = time.perf_counter()
    try:
        rows = backend.query(f"{sql} SETTINGS max_memory_usage = {max_memory}").rows
    except SinkError as exc:
        return {"s": round(time.perf_counter() - t, 3), "error": str(exc)[:200]}
    return {"s": round(time.perf_counter() - t, 3), "rows": len(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--forecast-rows", type=int, default=100_000_000)
    parser.add_argument("--max-memory-gb", type=float, default=4.0)
    parser.add_argument("--skip-before", action="store_true", help="time only the new views")
    parser.add_argument("--path", type=Path, default=None, help="chDB directory (default: temp)")
    args = parser.parse_args(argv)
    path = args.path or Path(tempfile.mkdtemp(prefix="gridstream-scale-"))
    backend = ChdbBackend(path)
    max_memory = int(args.max_memory_gb * 2**30)
    result: dict[str, object] = {"entities": args.entities, "max_memory_gb": args.max_memory_gb}
    try:
        result["load"] = load(backend, args.entities, args.forecast_rows)
        print(f"loaded: {result['load']}", flush=True)
        middle = T0_S + int(result["load"]["steps"]) // 2 * STEP_S  # type: ignore[index]
        day = datetime.fromtimestamp(middle, tz=UTC).strftime("%Y-%m-%d")
        result["day"] = day
        runs = []
        for question, before, after in questions(day, "m-42"):
            run: dict[str, object] = {"question": question}
            run["after"] = timed(backend, after, max_memory)
            if not args.skip_before:
                run["before"] = timed(backend, before, max_memory)
            print(json.dumps(run), flush=True)
            runs.append(run)
        result["queries"] = runs
        result["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    finally:
        backend.close()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "clickhouse_scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"max RSS {result.get('max_rss_gb')} GB; written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
