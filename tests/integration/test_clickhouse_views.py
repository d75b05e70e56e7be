"""The analyst views on the real engine, both backends: right numbers, and the same numbers when
a batch is written twice — dropped at insert, or let through as duplicates before any merge."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime

import numpy as np
import pytest

from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch, ReadingBatch, entity_key
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_common import ClickHouseBackend
from sinks.views import VIEWS
from streams.ops.accuracy import ForecastAccuracy, Matches

pytestmark = pytest.mark.integration

T = 1_717_977_600_000  # 2024-06-10T00:00:00Z
STEP = 900_000  # 15 min
NOW = T + 86_400_000


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@pytest.fixture
def sink(ch_backend: ClickHouseBackend, unique: str) -> Iterator[ClickHouseSink]:
    out = ClickHouseSink(ch_backend, f"gv_{unique}")
    out.ensure_schema()
    yield out
    ch_backend.command(f"DROP DATABASE IF EXISTS `gv_{unique}`")


def readings(
    entity: str, kind: str, ts: list[int], value: list[float], **chan: list[float]
) -> ReadingBatch:
    n = len(ts)
    nan = np.full(n, np.nan)
    return ReadingBatch(
        entity=np.array([entity] * n, dtype=object),
        kind=np.array([kind] * n, dtype=object),
        ts_ms=np.array(ts, dtype=np.int64),
        value=np.array(value, dtype=np.float64),
        reactive=nan,
        voltage=np.array(chan.get("voltage", nan), dtype=np.float64),
        current=nan,
        frequency=nan,
        temperature=nan,
        quality=np.array(["ok"] * n if kind != "meter" else [None] * n, dtype=object),
        src_index=np.arange(n, dtype=np.int64),
    )


def concat(*batches: ReadingBatch) -> ReadingBatch:
    names = [f.name for f in dataclasses.fields(ReadingBatch)]
    return ReadingBatch(*(np.concatenate([getattr(b, n) for b in batches]) for n in names))


def forecasts(
    entity: str, kind: str, issued: list[int], horizon_s: int, p50: list[float]
) -> ForecastBatch:
    p = np.array(p50, dtype=np.float64)
    issued_a = np.array(issued, dtype=np.int64)
    return ForecastBatch(
        entity=np.array([entity] * len(issued), dtype=object),
        kind=np.array([kind] * len(issued), dtype=object),
        issued_ms=issued_a,
        horizon_s=np.full(len(issued), horizon_s, dtype=np.int64),
        target_ms=issued_a + horizon_s * 1000,
        p10=p * 0.9,
        p50=p,
        p90=p * 1.1,
        model="seasonal@1",
    )


def join(*batches: ForecastBatch) -> ForecastBatch:
    names = [f.name for f in dataclasses.fields(ForecastBatch) if f.name != "model"]
    return ForecastBatch(
        *(np.concatenate([getattr(b, n) for b in batches]) for n in names), batches[0].model
    )


def fc_take(batch: ForecastBatch, part: slice) -> ForecastBatch:
    names = [f.name for f in dataclasses.fields(ForecastBatch) if f.name != "model"]
    return ForecastBatch(*(getattr(batch, n)[part] for n in names), batch.model)


def anomaly(
    entity: str, kind: str, ts: int, severity: str, feature: str, score: float
) -> AnomalyRecord:
    return AnomalyRecord(
        event_id=f"{entity}-{ts}",
        entity_id=entity,
        entity_kind=kind,
        ts_ms=ts,
        score=score,
        severity=severity,
        detectors={"robust_z": score},
        fired=["robust_z"],
        explanation=[
            {"feature": feature, "value": 9.0, "expected": 1.0, "deviation": 8.0},
            {"feature": "voltage_v", "value": 230.0, "expected": 230.0, "deviation": 0.1},
        ],
        reading={"kw": 9.0},
        model_versions={"ensemble": "1"},
        detected_ms=NOW,
    )


# The meter: grid-stamped, kw 1.0, 1.1, ... ; voltage on even readings only.
M_TS = [T + i * STEP for i in range(12)]
M_KW = [round(1.0 + 0.1 * i, 10) for i in range(12)]
# The feeder: 250 ms late on every stamp, p_mw cycles 5, 6, 7, 8.
F_TS = [T + i * STEP + 250 for i in range(12)]
F_MW = [5.0 + i % 4 for i in range(12)]


def dataset() -> tuple[ReadingBatch, ForecastBatch, list[AnomalyRecord], list[DeadLetterRecord]]:
    meter = readings(
        "m-1", "meter", M_TS, M_KW, voltage=[230.0 if i % 2 == 0 else math.nan for i in range(12)]
    )
    feeder = readings("f-7", "feeder", F_TS, F_MW)
    idle = readings("m-0", "meter", M_TS[:2], [0.0, 0.0])  # zero load: no percentage error
    fc = join(
        # m-1, 15 min ahead, 1 % high; the last one is not due yet (no reading at its target)
        forecasts("m-1", "meter", M_TS[:12], 900, [a * 1.01 for a in M_KW[1:]] + [3.0]),
        # f-7, 15 min ahead of the grid stamp, 5 % low: matched to the reading 250 ms later
        forecasts(
            "f-7", "feeder", [T + i * STEP for i in range(11)], 900, [a * 0.95 for a in F_MW[1:]]
        ),
        # a model that could not forecast: NaN never counts
        forecasts("m-1", "meter", [M_TS[0] + 1], 3600, [math.nan]),
        forecasts("m-0", "meter", [M_TS[0]], 900, [0.5]),
    )
    anomalies = [
        anomaly("m-1", "meter", T + 1 * STEP, "critical", "kw", 0.97),
        anomaly("m-1", "meter", T + 2 * STEP, "warning", "kw", 0.81),
        anomaly("m-1", "meter", T + 3 * STEP, "critical", "identical_readings", 0.95),
        anomaly("f-7", "feeder", T + 1 * STEP + 250, "info", "p_mw_vs_time_of_day", 0.55),
        anomaly("f-7", "feeder", T + 86_400_000, "critical", "voltage_kv", 0.99),  # next day
    ]
    letters = [
        DeadLetterRecord("meter", 0, off, None, b"{bad", "malformed_json", f"err {off}", T + off)
        for off in (5, 3, 4)
    ]
    return concat(meter, feeder, idle), fc, anomalies, letters


def rows(sink: ClickHouseSink, sql: str) -> list[dict[str, object]]:
    result = sink.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.rows]


def snapshot(sink: ClickHouseSink) -> dict[str, list[tuple[object, ...]]]:
    """Every view's rows, floats rounded so summation order cannot matter."""

    def norm(v: object) -> object:
        return round(v, 9) if isinstance(v, float) and math.isfinite(v) else v

    return {
        v.name: [
            tuple(norm(x) for x in r)
            for r in sink.query(f"SELECT * FROM `{sink.database}`.{v.name} ORDER BY ALL").rows
        ]
        for v in VIEWS
    }


def matches(rd: ReadingBatch, fc: ForecastBatch) -> Matches:
    """The runtime's matcher over one batch: the ``forecast_errors`` a live run writes."""
    keys = entity_key(rd.kind, rd.entity)
    first = {k: i for i, k in reversed(list(enumerate(keys.tolist())))}
    rows = np.array([first[k] for k in entity_key(fc.kind, fc.entity).tolist()], dtype=np.int64)
    return ForecastAccuracy().match(
        keys, rd.ts_ms, rd.value, np.isfinite(rd.value), rows,  # type: ignore[arg-type]
        fc.horizon_s, fc.target_ms, fc.p50, fc.p10, fc.p90,
    )


def write_all(sink: ClickHouseSink, now_ms: int = NOW) -> None:
    rd, fc, an, dl = dataset()
    sink.write(fc, an, dl, now_ms, readings=rd, errors=matches(rd, fc))


# ------------------------------------------------------------------------------- the numbers


def test_readings_round_trip_with_null_channels(sink: ClickHouseSink) -> None:
    write_all(sink)
    db = sink.database
    got = rows(
        sink, f"SELECT * FROM `{db}`.readings FINAL WHERE entity_id = 'm-1' ORDER BY ts LIMIT 2"
    )
    assert got[0] == {
        "entity_id": "m-1",
        "entity_kind": "meter",
        "ts": utc(T),
        "value": 1.0,
        "unit": "kW",
        "reactive": None,
        "voltage": 230.0,
        "current": None,
        "frequency": None,
        "temperature": None,
        "quality": None,
        "written_at": utc(NOW),
    }
    assert got[1]["voltage"] is None  # absent, not NaN: avg(voltage) ignores it
    assert rows(
        sink, f"SELECT unit, quality FROM `{db}`.readings WHERE entity_id = 'f-7' LIMIT 1"
    ) == [{"unit": "MW", "quality": "ok"}]
    assert sink.query(f"SELECT avg(voltage) FROM `{db}`.readings WHERE entity_id = 'm-1'").rows == [
        (230.0,)
    ]


def test_load_views(sink: ClickHouseSink) -> None:
    write_all(sink)
    db = sink.database
    hourly = rows(sink, f"SELECT * FROM `{db}`.load_hourly WHERE entity_id = 'm-1' ORDER BY hour")
    assert [r["hour"] for r in hourly] == [utc(T), utc(T + 3_600_000), utc(T + 7_200_000)]
    for r, chunk in zip(hourly, (M_KW[0:4], M_KW[4:8], M_KW[8:12]), strict=True):
        assert r["readings"] == 4 and r["unit"] == "kW"
        assert r["min_load"] == pytest.approx(min(chunk))
        assert r["avg_load"] == pytest.approx(np.mean(chunk))
        assert r["max_load"] == pytest.approx(max(chunk))
        assert r["p95_load"] == pytest.approx(np.percentile(chunk, 95))
    (daily,) = rows(sink, f"SELECT * FROM `{db}`.load_daily WHERE entity_id = 'f-7'")
    assert daily["day"] == date(2024, 6, 10)
    assert (daily["readings"], daily["min_load"], daily["max_load"]) == (12, 5.0, 8.0)
    assert daily["p95_load"] == pytest.approx(np.percentile(F_MW, 95))


def test_forecast_accuracy_joins_the_actual_at_the_target_time(sink: ClickHouseSink) -> None:
    write_all(sink)
    db = sink.database
    acc = rows(sink, f"SELECT * FROM `{db}`.forecast_accuracy ORDER BY entity_id, target_ts")
    meter = [r for r in acc if r["entity_id"] == "m-1"]
    feeder = [r for r in acc if r["entity_id"] == "f-7"]
    assert len(meter) == 11  # the 12th is not due; the NaN one never counts
    assert len(feeder) == 11
    first = meter[0]
    assert (first["target_ts"], first["actual_ts"], first["actual"]) == (
        utc(T + STEP),
        utc(T + STEP),
        1.1,
    )
    assert first["abs_error"] == pytest.approx(0.011)
    assert first["pct_error"] == pytest.approx(1.0)
    assert first["in_p10_p90"] == 1
    assert feeder[0]["actual_ts"] == utc(T + STEP + 250)  # SCADA jitter tolerated
    assert all(r["pct_error"] == pytest.approx(5.0) for r in feeder)
    (idle,) = [r for r in acc if r["entity_id"] == "m-0"]
    assert idle["actual"] == 0.0 and idle["pct_error"] is None and idle["abs_error"] == 0.5
    mape = rows(sink, f"SELECT * FROM `{db}`.forecast_mape_hourly ORDER BY entity_kind, hour")
    by_kind = {(r["entity_kind"], r["hour"]): r for r in mape}
    h0 = by_kind[("meter", utc(T))]
    assert h0["forecasts"] == 4 and h0["entities"] == 2  # m-1's three + m-0's one
    assert h0["mape_pct"] == pytest.approx(1.0)  # m-0's zero actual is skipped, not infinite
    assert h0["above_2pct"] == 0
    assert by_kind[("feeder", utc(T))]["mape_pct"] == pytest.approx(5.0)
    assert by_kind[("feeder", utc(T))]["above_2pct"] == 1


def test_anomaly_and_dead_letter_views(sink: ClickHouseSink) -> None:
    write_all(sink)
    db = sink.database
    counts = rows(sink, f"SELECT * FROM `{db}`.anomaly_counts_daily ORDER BY day, severity, kind")
    assert [(r["day"].day, r["severity"], r["kind"], r["anomalies"]) for r in counts] == [
        (10, "critical", "identical_readings", 1),
        (10, "critical", "kw", 1),
        (10, "info", "p_mw_vs_time_of_day", 1),
        (10, "warning", "kw", 1),
        (11, "critical", "voltage_kv", 1),
    ]
    top = rows(sink, f"SELECT * FROM `{db}`.top_anomalous_entities")
    assert [
        (r["entity_id"], r["anomalies"], r["critical"], r["warning"], r["info"]) for r in top
    ] == [
        ("m-1", 3, 2, 1, 0),
        ("f-7", 2, 1, 0, 1),
    ]
    assert top[0]["top_kind"] == "kw" and top[0]["max_score"] == 0.97
    assert (top[1]["first_ts"], top[1]["last_ts"]) == (utc(T + STEP + 250), utc(T + 86_400_000))
    (dl,) = rows(sink, f"SELECT * FROM `{db}`.dead_letters_daily")
    assert (dl["dead_letters"], dl["error_class"], dl["first_error"]) == (
        3,
        "malformed_json",
        "err 3",
    )


def test_drift_events_are_written(sink: ClickHouseSink) -> None:
    @dataclasses.dataclass
    class Drift:
        entity_id: str
        entity_kind: str
        ts_ms: int
        detector: str
        statistic: float
        detail: dict[str, object]
        detected_ms: int

    event = Drift("f-7", "feeder", T, "psi", 0.31, {"window": 96, "threshold": 0.2}, NOW)
    sink.write_drift_events([event, event])
    got = rows(sink, f"SELECT * FROM `{sink.database}`.drift_events")
    assert got == [
        {
            "entity_id": "f-7",
            "entity_kind": "feeder",
            "ts": utc(T),
            "detector": "psi",
            "statistic": 0.31,
            "detail": '{"window":96,"threshold":0.2}',
            "detected_at": utc(NOW),
        }
    ]


# ------------------------------------------------------------------------------- idempotency


def _raw_counts(sink: ClickHouseSink) -> dict[str, int]:
    db = sink.database
    return {
        t: int(sink.query(f"SELECT count() FROM `{db}`.{t}").rows[0][0])
        for t in ("readings", "forecasts", "anomalies", "dead_letters")
    }


def test_the_same_batch_twice_changes_nothing(sink: ClickHouseSink) -> None:
    write_all(sink)
    before, counts = snapshot(sink), _raw_counts(sink)
    write_all(sink)  # a retry: same stamp
    write_all(sink, NOW + 5_000)  # a replay after a crash: stamped later
    assert _raw_counts(sink) == counts  # dropped at insert by the deduplication token
    assert snapshot(sink) == before


def test_duplicates_that_reach_the_table_do_not_count(sink: ClickHouseSink) -> None:
    for table in ("readings", "forecasts", "anomalies", "dead_letters"):
        sink.backend.command(f"SYSTEM STOP MERGES `{sink.database}`.{table}")  # none may hide them
    write_all(sink)
    before, counts = snapshot(sink), _raw_counts(sink)
    # The replay batches differently (first half, second half): other tokens, real duplicates.
    rd, fc, an, dl = dataset()
    r_half, f_half = len(rd) // 2, len(fc) // 2
    sink.write(
        fc_take(fc, slice(0, f_half)), an[:2], dl[:1], NOW + 1, readings=rd.take(np.arange(r_half))
    )
    rest = rd.take(np.arange(r_half, len(rd)))
    sink.write(fc_take(fc, slice(f_half, None)), an[2:], dl[1:], NOW + 1, readings=rest)
    assert _raw_counts(sink) == {t: 2 * n for t, n in counts.items()}
    assert snapshot(sink) == before
    assert all(before[v.name] for v in VIEWS)  # every view had rows to compare


def test_readings_can_be_switched_off(sink: ClickHouseSink) -> None:
    quiet = ClickHouseSink(sink.backend, sink.database, store_readings=False)
    rd, fc, an, dl = dataset()
    quiet.write(fc, an, dl, NOW, readings=rd)
    assert _raw_counts(sink)["readings"] == 0
    assert _raw_counts(sink)["forecasts"] == len(fc)


def test_rollups_hold_each_point_once_however_often_it_arrives(sink: ClickHouseSink) -> None:
    """A replay that batches differently and a second backfill (migration 4 run again) both
    reach the rollups; their idempotent states keep every view's numbers unchanged."""
    from sinks.ddl import MIGRATIONS, render

    write_all(sink)
    before = snapshot(sink)
    rd, fc, an, dl = dataset()
    half = len(rd) // 2
    sink.write(fc, an[:1], [], NOW + 7, readings=rd.take(np.arange(half)))
    sink.write(fc, an[1:], dl, NOW + 7, readings=rd.take(np.arange(half, len(rd))))
    for statement in MIGRATIONS[3].statements:
        if statement.startswith("INSERT"):
            sink.backend.command(render(statement, sink.database))
    assert snapshot(sink) == before
    db = sink.database
    parts = int(sink.query(f"SELECT count() FROM `{db}`.load_hourly_agg").rows[0][0])
    hours = int(sink.query(f"SELECT count() FROM `{db}`.load_hourly").rows[0][0])
    assert parts > hours  # the copies did reach the rollup, and were absorbed


def test_range_views_answer_like_the_full_views_over_their_range(sink: ClickHouseSink) -> None:
    write_all(sink)
    db = sink.database
    full = sink.query(f"SELECT * FROM `{db}`.forecast_mape_hourly ORDER BY ALL").rows
    assert full
    hours = [r[0] for r in full]
    start, end = min(hours), max(hours)
    between = f"start = '{start:%Y-%m-%d %H:%M:%S}', end = '{end:%Y-%m-%d %H:%M:%S}'"
    ranged = sink.query(
        f"SELECT * FROM `{db}`.forecast_mape_hourly_between({between}) ORDER BY ALL"
    ).rows
    assert ranged == [r for r in full if r[0] < end]  # [start, end): the last hour is out
    accuracy = sink.query(f"SELECT count() FROM `{db}`.forecast_accuracy_between({between})").rows[
        0
    ][0]
    total = sink.query(
        f"SELECT countIf(target_ts < '{end:%Y-%m-%d %H:%M:%S}') FROM `{db}`.forecast_accuracy"
    ).rows[0][0]
    assert accuracy == total > 0


def test_a_replayed_batch_of_forecast_errors_does_not_double_mape(sink: ClickHouseSink) -> None:
    rd, fc, _, _ = dataset()
    errors = matches(rd, fc)
    assert set(errors.entity.tolist()) >= {entity_key("meter", "m-1"), entity_key("feeder", "f-7")}
    db = sink.database
    empty = ForecastBatch.empty()

    def state() -> tuple[object, ...]:
        raw = sink.query(f"SELECT count() FROM `{db}`.forecast_errors").rows[0][0]
        agg = sink.query(f"SELECT sum(forecasts), sum(pct_sum) FROM `{db}`.forecast_mape_agg")
        mape = sink.query(f"SELECT * FROM `{db}`.forecast_mape_hourly ORDER BY ALL").rows
        return raw, agg.rows[0], mape

    sink.write(empty, [], [], NOW, errors=errors)
    before = state()
    assert before[0] == len(errors) > 0
    sink.write(empty, [], [], NOW, errors=errors)  # a retry
    sink.write(empty, [], [], NOW + 5_000, errors=errors)  # a replay after a crash, stamped later
    assert state() == before
