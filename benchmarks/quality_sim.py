"""Detection and nowcast quality on the simulator's labelled telemetry (no Kafka).

``TelemetrySimulator`` emits meter and SCADA records with injected, labelled anomalies and real
imperfections (missing, late, duplicated records); the records, in emission order, go through
the backtest core (the live decoder, then ``GridProcessor`` in batches) with the processing
settings' defaults, exactly what a fresh deployment runs.

Detection (``models.evaluation.match_detections``): an anomaly event counts when it falls in a
labelled window of its entity, ``[start, end + 1 h]``; labels and events are scored from day 4
(the seasonal detector needs three days). Recall and median delay are per anomaly kind;
precision is per event, so it is given overall and per entity kind (an unmatched event has no
anomaly kind). Nowcast: MAPE, WAPE, MAE and p10-p90 coverage per horizon, for meters and for
SCADA assets (``models.evaluation.ForecastTracker``).

    python benchmarks/quality_sim.py [--quick] [--json FILE] [--days N] [--meters N] [--assets N]
                                     [--seed N] [--anomaly-rate PER_DAY]

Writes ``benchmarks/results/quality_sim.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.quality_nab import overrides
from models.evaluation import ForecastTracker, Label, match_detections, median
from models.processor import ProcessResult
from schemas.batch import ForecastBatch, ReadingBatch
from streams.config import ProcessingSettings
from streams.sim.generator import SimConfig, TelemetrySimulator
from streams.tools.backtest import DEFAULT_BATCH_SIZE, backtest_values

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Monday
DAY_MS = 86_400_000
GRACE_MS = 3_600_000
SCORED_FROM_DAY = 3  # day 4 on


def simulate(config: SimConfig, days: float) -> tuple[list[bytes], list[str], list[Label], dict]:
    """Every record the simulator emits in ``days``, in emission order, and the labels."""
    sim = TelemetrySimulator(config, START_MS)
    values: list[bytes] = []
    contracts: list[str] = []
    labels: list[Label] = []
    stats: Counter[str] = Counter()
    end = START_MS + int(days * DAY_MS)
    for t in range(START_MS + 3_600_000, end + 1, 3_600_000):  # an hour at a time
        batch = sim.step_until(t)
        values.extend(batch.value)
        contracts.extend(batch.contract)
        stats.update(
            generated=batch.generated,
            missing=batch.missing,
            late=batch.late,
            duplicates=batch.duplicates,
        )
        for lab in batch.labels:
            labels.append(
                Label(
                    lab.entity_id,
                    lab.entity_kind,
                    lab.kind,
                    int(lab.start_ts.timestamp() * 1000),
                    int(lab.end_ts.timestamp() * 1000),
                )
            )
    stats["held_back_at_end"] = sim.held_back
    return values, contracts, labels, dict(stats)


def _subset(fc: ForecastBatch, meter: bool) -> ForecastBatch:
    keep = (fc.kind == "meter") == meter
    return ForecastBatch(
        fc.entity[keep],
        fc.kind[keep],
        fc.issued_ms[keep],
        fc.horizon_s[keep],
        fc.target_ms[keep],
        fc.p10[keep],
        fc.p50[keep],
        fc.p90[keep],
        fc.model,
    )


def _pct(x: float) -> float | None:
    return None if math.isnan(x) else round(100.0 * x, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 days, 60 meters, 10 assets")
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--meters", type=int, default=300)
    ap.add_argument("--assets", type=int, default=30)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--anomaly-rate",
        type=float,
        default=SimConfig().anomaly_rate_per_day,
        help="anomalies started per entity and day (the simulator's default: one every 2 days)",
    )
    ap.add_argument("--json", type=Path, default=RESULTS / "quality_sim.json")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a ProcessorParams number (repeatable), as quality_nab.py takes it",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.days, args.meters, args.assets = 5.0, 60, 10
    config = SimConfig(
        meters=args.meters,
        assets=args.assets,
        seed=args.seed,
        anomaly_rate_per_day=args.anomaly_rate,
    )
    params = replace(ProcessingSettings().params(), **overrides(args.param))

    started = time.perf_counter()
    values, contracts, labels, sim_stats = simulate(config, args.days)
    sim_s = time.perf_counter() - started
    trackers = {"meter": ForecastTracker(), "scada": ForecastTracker()}

    def on_batch(batch: ReadingBatch, res: ProcessResult) -> None:
        is_meter = batch.kind == "meter"
        for name, meter in (("meter", True), ("scada", False)):
            trackers[name].add_forecasts(_subset(res.forecasts, meter))
            trackers[name].add_actuals(batch.take(is_meter == meter), params.horizons_s)

    started = time.perf_counter()
    result = backtest_values(values, contracts, params, args.batch_size, on_batch)
    backtest_s = time.perf_counter() - started

    scored_from = START_MS + SCORED_FROM_DAY * DAY_MS
    det = match_detections(result.events, labels, GRACE_MS, scored_from)
    per_kind = {
        kind: {
            "detected": found,
            "labels": total,
            "recall_pct": _pct(found / total if total else math.nan),
            "median_delay_s": median(det.delays_s.get(kind, [])),
        }
        for kind, (found, total) in det.per_kind.items()
    }
    by_entity_kind: dict[str, dict[str, float | int | None]] = {}
    for ek in sorted(
        {ev.entity_kind for ev in result.events} | {lab.entity_kind for lab in labels}
    ):
        sub = match_detections(
            [ev for ev in result.events if ev.entity_kind == ek],
            [lab for lab in labels if lab.entity_kind == ek],
            GRACE_MS,
            scored_from,
        )
        by_entity_kind[ek] = {
            "events": sub.events,
            "precision_pct": _pct(sub.precision),
            "recall_pct": _pct(sub.recall),
            "labels": sub.labels,
        }
    nowcast = {
        name: {
            f"{h}s": {
                "n": err.n,
                "mape_pct": err.mape,
                "wape_pct": err.wape,
                "mae": err.mae,
                "coverage_p10_p90_pct": _pct(err.coverage),
            }
            for h, err in sorted(tracker.by_horizon.items())
        }
        for name, tracker in trackers.items()
    }
    dead = Counter(x for x in result.dead_letter if x is not None)
    report = {
        "benchmark": "sim",
        "quick": args.quick,
        "config": {"days": args.days, "start_ms": START_MS, **asdict(config)},
        "records": len(values),
        "simulator": sim_stats,
        "simulate_s": round(sim_s, 2),
        "backtest_s": round(backtest_s, 2),
        "params": params.describe(),
        "counters": {k: int(v) for k, v in result.counters.items()},
        "dead_letters": dict(dead),
        "detection": {
            "scored_from_day": SCORED_FROM_DAY + 1,
            "grace_s": GRACE_MS // 1000,
            "events": det.events,
            "true_events": det.true_events,
            "precision_pct": _pct(det.precision),
            "recall_pct": _pct(det.recall),
            "labels": det.labels,
            "per_kind": per_kind,
            "by_entity_kind": by_entity_kind,
        },
        "nowcast": nowcast,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")

    print(
        f"simulator: {args.days:g} days, {args.meters} meters, {args.assets} assets, "
        f"{len(values):,} records ({sim_s:.1f} s); backtest {backtest_s:.1f} s; "
        f"dead letters {dict(dead)}"
    )
    print(
        f"detection from day {SCORED_FROM_DAY + 1}: events {det.events}, precision "
        f"{_pct(det.precision)} %, recall {_pct(det.recall)} % ({det.detected}/{det.labels})"
    )
    print(f"  {'kind':<13} {'recall':>12} {'median delay':>13}")
    for kind, row in per_kind.items():
        delay = row["median_delay_s"]
        shown = "-" if math.isnan(delay) else f"{delay / 60:.0f} min"
        print(
            f"  {kind:<13} {row['detected']:>4}/{row['labels']:<4}"
            f"{row['recall_pct'] or 0:>5.1f}% {shown:>12}"
        )
    for ek, row in by_entity_kind.items():
        print(
            f"  {ek:<13} events {row['events']:>5}  precision {row['precision_pct']} %  "
            f"recall {row['recall_pct']} % of {row['labels']}"
        )
    print("nowcast:")
    for name, hs in nowcast.items():
        for h, row in hs.items():
            print(
                f"  {name:<6} {h:>6}: n {row['n']:>8,}  MAPE {row['mape_pct']:6.2f} %  WAPE "
                f"{row['wape_pct']:6.2f} %  coverage {row['coverage_p10_p90_pct']} %"
            )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
