"""The backtest: file rows -> the live decoder -> the processor -> one output row per input row.

Behaviour only (layout, order, warm-up, dead letters, batch independence), never scores' values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.params import ProcessorParams
from streams.tools.backtest import (
    BacktestInputError,
    backtest_file,
    backtest_frame,
    read_input,
)

START_MS = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
STEP_MS = 900_000
DAY_STEPS = 96
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def readings(meters: int = 3, days: float = 4.0, seed: int = 0) -> pd.DataFrame:
    """Daily-shaped noisy load of several meters, interleaved by time, every cell text (as CSV)."""
    rng = np.random.default_rng(seed)
    steps = int(days * DAY_STEPS)
    ts = START_MS + STEP_MS * np.arange(steps)
    hour = (ts / 3_600_000) % 24
    rows = []
    for m in range(meters):
        kw = 2.0 + np.sin(2 * np.pi * (hour + m) / 24) + 0.05 * rng.standard_normal(steps)
        rows.append(pd.DataFrame({"meter_id": f"m-{m}", "ts": ts, "kw": np.round(kw, 3)}))
    frame = pd.concat(rows).sort_values("ts", kind="stable").reset_index(drop=True)
    return frame.astype(str)


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meter_rows(frame: pd.DataFrame, meter: str) -> np.ndarray:
    return np.flatnonzero((frame["meter_id"] == meter).to_numpy())


def test_one_row_per_input_row_in_input_order_with_named_columns() -> None:
    frame = readings()
    out, result = backtest_frame(frame, ProcessorParams(horizons_s=(900, 3600)))
    assert len(out) == len(frame) == len(result)
    assert list(out.columns) == [
        "meter_id",
        "ts",
        "anomaly_score",
        "severity",
        "p10_900s",
        "p50_900s",
        "p90_900s",
        "p10_3600s",
        "p50_3600s",
        "p90_3600s",
        "expected",
        "dead_letter",
        "dead_letter_error",
    ]
    assert out["meter_id"].tolist() == frame["meter_id"].tolist()
    assert out["ts"].tolist() == frame["ts"].tolist()
    assert out["dead_letter"].isna().all()


def test_warm_up_then_scores_and_forecasts() -> None:
    params = ProcessorParams()
    frame = readings(meters=2, days=1)
    out, _ = backtest_frame(frame, params)
    for meter in ("m-0", "m-1"):
        rows = out.iloc[meter_rows(frame, meter)]
        p50 = rows["p50_900s"].to_numpy(dtype=float)
        assert np.isnan(p50[: params.forecast_min - 1]).all()
        assert np.isfinite(p50[params.forecast_min - 1 :]).all()
        score = rows["anomaly_score"].to_numpy(dtype=float)
        assert np.isnan(score[: params.warmup]).all()
        assert np.isfinite(score[params.warmup :]).all()
        assert ((score[params.warmup :] >= 0) & (score[params.warmup :] <= 1)).all()
        width = rows["p90_3600s"].to_numpy(dtype=float) - rows["p10_3600s"].to_numpy(dtype=float)
        assert (width[params.forecast_min :] >= 0).all()


def test_an_injected_spike_scores_high_and_gets_a_severity() -> None:
    frame = readings(days=4)
    m1 = meter_rows(frame, "m-1")
    spike = m1[3 * DAY_STEPS + 40]
    frame.loc[spike, "kw"] = str(float(frame.loc[spike, "kw"]) * 8)
    out, result = backtest_frame(frame)
    score = out["anomaly_score"].to_numpy(dtype=float)
    before = score[m1[3 * DAY_STEPS : 3 * DAY_STEPS + 40]]
    assert score[spike] >= 0.9
    assert score[spike] > np.nanmax(before)
    assert out.loc[spike, "severity"] in ("warning", "critical")
    assert any(
        ev.entity_id == "m-1" and ev.ts_ms == int(frame.loc[spike, "ts"]) for ev in result.events
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kw": "abc"}, "invalid_type"),
        ({"kw": ""}, "missing_field"),
        ({"kw": "nan"}, "invalid_type"),
        ({"kw": "1e9"}, "out_of_range"),
        ({"ts": ""}, "missing_field"),
        ({"ts": "yesterday"}, "invalid_value"),
        ({"ts": "2024-03-04 10:00:00"}, "invalid_value"),  # RFC 3339 needs an offset
        ({"meter_id": ""}, "missing_field"),
    ],
)
def test_a_malformed_row_is_dead_lettered_and_the_run_goes_on(change: dict, reason: str) -> None:
    frame = readings(meters=2, days=1)
    bad = meter_rows(frame, "m-0")[30]
    for column, value in change.items():
        frame.loc[bad, column] = value
    out, result = backtest_frame(frame)
    assert out.loc[bad, "dead_letter"] == reason
    assert out.loc[bad, "dead_letter_error"]
    assert np.isnan(out.loc[bad, "anomaly_score"]) and np.isnan(out.loc[bad, "p50_900s"])
    assert out["dead_letter"].notna().sum() == 1
    later = meter_rows(frame, "m-0")[31:]
    assert np.isfinite(out["anomaly_score"].to_numpy(dtype=float)[later]).all()
    assert result.counters["dead_letters"] == 1


def test_epoch_ms_and_rfc3339_timestamps_give_the_same_output() -> None:
    frame = readings(meters=2, days=2)
    text = frame.copy()
    text["ts"] = [rfc3339(int(t)) for t in frame["ts"]]
    mixed = frame.copy()
    mixed.loc[::3, "ts"] = text.loc[::3, "ts"]
    a, _ = backtest_frame(frame)
    for other in (text, mixed):
        b, _ = backtest_frame(other)
        assert b["ts"].tolist() == other["ts"].tolist()
        cols = [c for c in a.columns if c != "ts"]
        pd.testing.assert_frame_equal(a[cols], b[cols])


def test_interleaved_meters_are_kept_apart() -> None:
    """Each meter's expectation and forecasts are those of the meter backtested alone."""
    frame = readings(meters=4, days=2)
    out, _ = backtest_frame(frame)
    for meter in ("m-0", "m-3"):
        rows = meter_rows(frame, meter)
        alone, _ = backtest_frame(frame.iloc[rows].reset_index(drop=True))
        for col in ("expected", "p10_900s", "p50_900s", "p90_3600s"):
            np.testing.assert_array_equal(out[col].to_numpy()[rows], alone[col].to_numpy())


def test_rows_of_a_meter_going_back_in_time_are_out_of_order() -> None:
    frame = readings(meters=2, days=1)
    m0 = meter_rows(frame, "m-0")
    late = m0[20]
    frame.loc[late, "ts"] = frame.loc[m0[10], "ts"]  # goes back 10 steps (a replayed reading)
    frame.loc[late, "kw"] = "9.999"
    out, _ = backtest_frame(frame)
    assert out.loc[late, "dead_letter"] == "out_of_order"
    assert "before the entity's last reading" in out.loc[late, "dead_letter_error"]
    assert out["dead_letter"].notna().sum() == 1
    assert np.isfinite(out["anomaly_score"].to_numpy(dtype=float)[m0[21:]]).all()


def test_a_file_written_out_of_time_order_is_judged_per_meter_in_file_order() -> None:
    """m-1's rows all come after m-0's in the file: fine, each meter is in order."""
    frame = readings(meters=2, days=1)
    by_meter = frame.sort_values("meter_id", kind="stable").reset_index(drop=True)
    out, _ = backtest_frame(by_meter)
    assert out["dead_letter"].isna().all()
    assert out["meter_id"].tolist() == by_meter["meter_id"].tolist()


def test_duplicates_are_dropped_and_conflicts_dead_lettered() -> None:
    frame = readings(meters=1, days=1)
    again = frame.iloc[[40]]
    conflict = frame.iloc[[41]].assign(kw="7.5")
    frame = pd.concat([frame.iloc[:41], again, frame.iloc[41:42], conflict, frame.iloc[42:]])
    frame = frame.reset_index(drop=True)
    out, result = backtest_frame(frame)
    assert result.counters["dropped_duplicate"] == 1
    assert np.isnan(out.loc[41, "anomaly_score"]) and pd.isna(out.loc[41, "dead_letter"])
    assert out.loc[43, "dead_letter"] == "conflicting_duplicate"
    assert np.isfinite(out.loc[42, "anomaly_score"])


def test_output_does_not_depend_on_batch_size() -> None:
    frame = readings(meters=5, days=4, seed=3)
    frame.loc[meter_rows(frame, "m-2")[300], "kw"] = "40"
    reference, ref = backtest_frame(frame, batch_size=5000)
    for size in (1, 7, 333, 10**6):
        out, res = backtest_frame(frame, batch_size=size)
        pd.testing.assert_frame_equal(out, reference)
        assert [ev.event_id for ev in res.events] == [ev.event_id for ev in ref.events]


def test_partitions_split_the_entities_over_cores_and_keep_one_row_per_input_row() -> None:
    from streams.state.tasks import partition_of

    frame = readings(meters=6, days=2, seed=5)
    frame.loc[7, "kw"] = "abc"
    one, _ = backtest_frame(frame)
    four, res = backtest_frame(frame, partitions=4)
    assert len(four) == len(frame) and four.loc[7, "dead_letter"] == "invalid_type"
    # the meters land on more than one core, each where the producer's partitioner sends it
    assert len(set(partition_of(frame["meter_id"].unique(), 4).tolist())) > 1
    # per-entity detectors and forecasts do not depend on which core an entity is on
    pd.testing.assert_frame_equal(four, one)
    assert res.batches >= 1
    with pytest.raises(ValueError, match="partitions"):
        backtest_frame(frame, partitions=0)


def test_csv_and_parquet_files(tmp_path: Path) -> None:
    frame = readings(meters=2, days=1)
    frame.loc[7, "kw"] = "abc"
    csv_in, csv_out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(csv_in, index=False)
    backtest_file(csv_in, csv_out)
    from_csv = pd.read_csv(csv_out)
    assert len(from_csv) == len(frame)
    assert from_csv.loc[7, "dead_letter"] == "invalid_type"

    typed = readings(meters=2, days=1)
    typed["ts"] = pd.to_datetime(typed["ts"].astype("int64"), unit="ms", utc=True)
    typed["kw"] = typed["kw"].astype(float)
    typed.loc[7, "kw"] = np.nan
    pq_in, pq_out = tmp_path / "in.parquet", tmp_path / "out.csv"
    typed.to_parquet(pq_in, index=False)
    backtest_file(pq_in, pq_out)
    from_parquet = pd.read_csv(pq_out)
    assert len(from_parquet) == len(frame)
    assert from_parquet.loc[7, "dead_letter"] == "missing_field"
    cols = ["anomaly_score", "p50_900s", "expected"]
    keep = from_csv.index != 7
    pd.testing.assert_frame_equal(from_csv.loc[keep, cols], from_parquet.loc[keep, cols])


def test_parquet_with_epoch_ms_integers(tmp_path: Path) -> None:
    typed = readings(meters=2, days=1).astype({"ts": "int64", "kw": "float64"})
    path = tmp_path / "in.parquet"
    typed.to_parquet(path, index=False)
    out, _ = backtest_frame(read_input(path))
    assert out["dead_letter"].isna().all()
    assert np.isfinite(out["anomaly_score"].to_numpy(dtype=float)[-10:]).all()


def test_a_file_without_the_required_columns_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BacktestInputError, match="meter_id"):
        backtest_frame(pd.DataFrame({"id": ["a"], "ts": ["0"], "kw": ["1"]}))
    with pytest.raises(BacktestInputError, match="kw"):
        backtest_frame(pd.DataFrame({"meter_id": ["a"], "ts": ["0"]}))
    with pytest.raises(BacktestInputError, match="does not exist"):
        read_input(tmp_path / "nope.csv")


def test_scada_files_use_the_scada_contract() -> None:
    frame = readings(meters=2, days=1).rename(columns={"meter_id": "asset_id", "kw": "p_mw"})
    frame["asset_kind"] = "feeder"
    frame.loc[5, "asset_kind"] = "toaster"
    out, _ = backtest_frame(frame)
    assert "asset_id" in out.columns
    assert out.loc[5, "dead_letter"] == "invalid_value"
    assert out["dead_letter"].notna().sum() == 1


@pytest.mark.skipif(not (SHARED_DATA / "nab").is_dir(), reason="NAB data not in ../shared/data")
def test_nab_conversion_layout(tmp_path: Path) -> None:
    from benchmarks.quality_nab import nab_files, nab_frame, write_results

    files = nab_files(SHARED_DATA / "nab", ("artificialNoAnomaly/art_flatline.csv",))
    assert [k for k, _ in files] == ["artificialNoAnomaly/art_flatline.csv"]
    frame = nab_frame(files)
    raw = pd.read_csv(files[0][1])
    assert len(frame) == len(raw)
    assert set(frame["meter_id"]) == {"artificialNoAnomaly/art_flatline"}
    assert frame["ts"].iloc[0] == pd.Timestamp(raw["timestamp"].iloc[0]).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    out, _ = backtest_frame(frame[["meter_id", "ts", "kw"]])
    write_results(frame, out["anomaly_score"].to_numpy(), tmp_path)
    result = pd.read_csv(tmp_path / "artificialNoAnomaly" / "art_flatline.csv")
    assert list(result.columns) == ["timestamp", "anomaly_score"]
    assert result["timestamp"].tolist() == raw["timestamp"].tolist()
    assert result["anomaly_score"].between(0, 1).all()
