"""Nowcast quality on ETT (transformer load and oil temperature, ../shared/data/ett).

Each channel of the transformer (HUFL, HULL, MUFL, MULL, LUFL, LULL, OT) is one entity
(``meter_id`` = channel, ``kw`` = value, naive timestamps read as UTC) and the whole file goes
through one ``gridstream backtest`` run, learning as it goes (no look-ahead: a forecast only sees
readings up to the one it is issued at).

Split: chronological, first 60 % of the rows warm-up, last 40 % test. ETT's standard 12/4/4-month
split does not fit the 6.8-month ETTm1 extract here, so both files use 60/40. A forecast is scored
when its target time is in the test part, against:
- persistence: the value at the issue time;
- seasonal naive: the value 24 h before the target.
All three are scored on the same (channel, target) pairs.

Metrics per channel and horizon: MAE; MAPE over actuals with |y| >= 5 % of the channel's mean |y|
in the warm-up part (ETT's "useless load" channels cross zero, where MAPE is meaningless; the
excluded share is reported); MASE = MAE / the warm-up part's MAE of one-step persistence at the
file's own step (1 h for ETTh1, 15 min for ETTm1); and, for our forecasts, the share of actuals
inside p10..p90 (80 % when calibrated). "mean" rows average the channels (MASE is scale-free).

    python benchmarks/quality_ett.py [--quick] [--json FILE]

Writes ``benchmarks/results/quality_ett.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.ensemble import load_ensemble
from models.params import ProcessorParams
from models.training import train_model_set
from streams.tools.backtest import DEFAULT_BATCH_SIZE, backtest_frame, reading_batches

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results"
CHANNELS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
# file, native step (s), horizons (s): the next step and one hour ahead
DATASETS = {
    "ETTh1": ("ETTh1.csv", 3600, (3600,)),
    "ETTm1": ("ETTm1_first19557rows.csv", 900, (900, 3600)),
}
TRAIN_FRACTION = 0.6
MAPE_FLOOR = 0.05  # of the channel's mean |y| in the warm-up part
METHODS = ("gridstream_p50", "persistence", "seasonal_naive")
DAY_MS = 86_400_000


def ett_frame(path: Path, rows: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(wide table with epoch-ms ``ts``, long backtest input ``meter_id, ts, kw``)."""
    wide = pd.read_csv(path, nrows=rows)
    ts = pd.to_datetime(wide["date"]).dt.tz_localize("UTC")
    wide["ts"] = ts.astype("datetime64[ms, UTC]").astype("int64")
    long = wide.melt(
        id_vars=["ts"], value_vars=list(CHANNELS), var_name="meter_id", value_name="kw"
    )
    long["order"] = long["meter_id"].map({c: i for i, c in enumerate(CHANNELS)})
    long = long.sort_values(["ts", "order"], kind="stable").reset_index(drop=True)
    return wide, long[["meter_id", "ts", "kw"]]


def _metrics(pred: np.ndarray, actual: np.ndarray, floor: float, scale: float) -> dict:
    err = np.abs(pred - actual)
    use = np.abs(actual) >= floor
    return {
        "n": int(err.size),
        "mae": float(err.mean()),
        "mape_pct": float(100.0 * (err[use] / np.abs(actual[use])).mean()) if use.any() else None,
        "mape_excluded_share": float(1.0 - use.mean()),
        "mase": float(err.mean() / scale),
    }


def evaluate(wide: pd.DataFrame, out: pd.DataFrame, step_s: int, horizons: tuple[int, ...]) -> dict:
    """Per horizon and channel: metrics of our p50 and the two baselines, and our coverage."""
    split_ms = int(wide["ts"].iloc[int(len(wide) * TRAIN_FRACTION)])
    report: dict[str, dict] = {}
    for h in horizons:
        per_channel: dict[str, dict] = {}
        for ch in CHANNELS:
            series = pd.Series(wide[ch].to_numpy(), index=wide["ts"].to_numpy())
            train = series[series.index < split_ms]
            naive_step = np.abs(np.diff(train.to_numpy()))
            scale = float(naive_step.mean())
            floor = MAPE_FLOOR * float(np.abs(train.to_numpy()).mean())
            ours = out[out["meter_id"] == ch]
            issue = ours["ts"].to_numpy(dtype=np.int64)
            target = issue + h * 1000
            p10, p50, p90 = (ours[f"{q}_{h}s"].to_numpy(dtype=float) for q in ("p10", "p50", "p90"))
            actual = series.reindex(target).to_numpy()
            persistence = series.reindex(issue).to_numpy()
            seasonal = series.reindex(target - DAY_MS).to_numpy()
            ok = (
                (target >= split_ms)
                & np.isfinite(actual)
                & np.isfinite(p50)
                & np.isfinite(persistence)
                & np.isfinite(seasonal)
            )
            y = actual[ok]
            preds = {
                "gridstream_p50": p50[ok],
                "persistence": persistence[ok],
                "seasonal_naive": seasonal[ok],
            }
            entry = {m: _metrics(preds[m], y, floor, scale) for m in METHODS}
            entry["coverage_p10_p90"] = float(((p10[ok] <= y) & (y <= p90[ok])).mean())
            entry["mean_interval_width"] = float((p90[ok] - p10[ok]).mean())
            entry["mase_scale"] = scale
            per_channel[ch] = entry
        mean = {
            m: {
                k: float(np.mean([per_channel[c][m][k] for c in CHANNELS])) for k in ("mae", "mase")
            }
            for m in METHODS
        }
        for m in METHODS:
            mapes = [per_channel[c][m]["mape_pct"] for c in CHANNELS]
            mean[m]["mape_pct"] = float(np.mean([x for x in mapes if x is not None]))
        mean["coverage_p10_p90"] = float(
            np.mean([per_channel[c]["coverage_p10_p90"] for c in CHANNELS])
        )
        report[f"{h}s"] = {"channels": per_channel, "mean": mean}
    return {"split_ts_ms": split_ms, "horizons": report}


def _ensemble(wide: pd.DataFrame, long: pd.DataFrame, params: ProcessorParams, batch_size: int,
              step_s: int, horizons: tuple[int, ...], ev: dict) -> dict:
    """Train on the warm-up part only, backtest the whole file with the set, score the test part
    as above; adds ``ensemble_p50`` to every horizon's means and channels (in place)."""
    split_ms = int(wide["ts"].iloc[int(len(wide) * TRAIN_FRACTION)])
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        batches, _ = reading_batches(long[long["ts"] < split_ms], batch_size)
        path, metrics, _ = train_model_set(batches, params, Path(store))
        trained_s = time.perf_counter() - started
        ensemble = load_ensemble(path)
        started = time.perf_counter()
        out, _ = backtest_frame(long, params, batch_size, ensemble)
        backtest_s = time.perf_counter() - started
    ev2 = evaluate(wide, out, step_s, horizons)
    for h in horizons:
        mine, theirs = ev["horizons"][f"{h}s"], ev2["horizons"][f"{h}s"]
        mine["mean"]["ensemble_p50"] = theirs["mean"]["gridstream_p50"]
        mine["mean"]["ensemble_coverage_p10_p90"] = theirs["mean"]["coverage_p10_p90"]
        for ch in CHANNELS:
            mine["channels"][ch]["ensemble_p50"] = theirs["channels"][ch]["gridstream_p50"]
    return {"model": ensemble.ref, "train_s": round(trained_s, 2),
            "backtest_s": round(backtest_s, 2), "training_metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the first 4,000 rows of each file")
    ap.add_argument("--json", type=Path, default=RESULTS / "quality_ett.json")
    ap.add_argument("--data", type=Path, default=SHARED / "data", help="the shared data folder")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--no-train", action="store_true", help="skip the trained ensemble")
    args = ap.parse_args(argv)
    ett_dir = args.data / "ett"
    if not ett_dir.is_dir():
        print(f"ETT data not found under {ett_dir}", file=sys.stderr)
        return 2
    report: dict[str, object] = {
        "benchmark": "ett",
        "quick": args.quick,
        "split": f"chronological, first {TRAIN_FRACTION:.0%} warm-up, rest test",
        "mape_floor": f"{MAPE_FLOOR:.0%} of the channel's mean |y| in the warm-up part",
        "mase_scale": "warm-up MAE of one-step persistence at the file's own step",
        "datasets": {},
    }
    lines = []
    for name, (file, step_s, horizons) in DATASETS.items():
        wide, long = ett_frame(ett_dir / file, 4000 if args.quick else None)
        params = ProcessorParams(horizons_s=horizons)
        started = time.perf_counter()
        out, result = backtest_frame(long, params, args.batch_size)
        elapsed = time.perf_counter() - started
        ev = evaluate(wide, out, step_s, horizons)
        ev.update(
            rows=len(wide),
            step_s=step_s,
            backtest_s=round(elapsed, 2),
            params=params.describe(),
            counters={k: int(v) for k, v in result.counters.items()},
        )
        if not args.no_train:
            ev["ensemble"] = _ensemble(wide, long, params, args.batch_size, step_s, horizons, ev)
        report["datasets"][name] = ev  # type: ignore[index]
        for h in horizons:
            mean = ev["horizons"][f"{h}s"]["mean"]
            methods = METHODS if args.no_train else (*METHODS, "ensemble_p50")
            for m in methods:
                cov_key = {"gridstream_p50": "coverage_p10_p90",
                           "ensemble_p50": "ensemble_coverage_p10_p90"}.get(m)
                cov = f"{100 * mean[cov_key]:5.1f} %" if cov_key else ""
                lines.append(
                    f"{name:<6} {h:>5} s  {m:<15} {mean[m]['mase']:7.3f} "
                    f"{mean[m]['mae']:7.3f} {mean[m]['mape_pct']:8.1f} %  {cov}"
                )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"ETT{' (quick)' if args.quick else ''}: mean over the 7 channels, test = last 40 %")
    print(
        f"{'data':<6} {'horizon':>7}  {'method':<15} {'MASE':>7} {'MAE':>7} {'MAPE':>10}"
        f"  p10-p90 coverage"
    )
    for line in lines:
        print(line)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
