"""Per-stage cost of the pipeline in one process, without Kafka: where the time goes.

Simulated telemetry (2,000 meters, 50 SCADA assets, 4 days: about 825k records) is cut into
batches and pushed through decode -> core -> encode (forecasts, anomalies) -> ClickHouse insert
(embedded chDB in a temporary directory). Prints records/s and microseconds per record for each
stage and in total, and writes ``benchmarks/results/stages.json``.

    python benchmarks/stages.py [--quick] [--batch-size 5000] [--json FILE]

The core is split by its own timings (``ProcessResult.timings``): windows + detectors + fusion,
nowcast, the online detector (river HalfSpaceTrees), and the rest (slot lookup, drift). ``--gc ab``
runs the stage loop several times in one process, alternating the interpreter's default cyclic-GC
settings and ``gridstream run``'s policy (``streams.runtime.workers.apply_gc_policy``), so the
two are compared on the same machine state rather than across noisy runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

from models.processor import GridProcessor
from schemas.decode import decode_batch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from sinks.encode import encode_anomalies, encode_forecasts
from streams.runtime.workers import apply_gc_policy
from streams.sim.generator import SimConfig, TelemetrySimulator

RESULTS = Path(__file__).resolve().parent / "results"
DAY_MS = 86_400_000


STAGES = ("decode", "core.detectors", "core.nowcast", "core.online", "core.other",
          "encode_forecasts", "encode_anomalies", "clickhouse")


def _gc(mode: str) -> None:
    if mode == "tuned":
        apply_gc_policy()
    else:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)  # CPython's defaults


def stage_loop(values: list[bytes], contracts: list[str], now: int, batch_size: int,
               sink: ClickHouseSink | None) -> dict[str, float]:
    """Seconds spent in each stage over all batches, with a fresh processor."""
    proc = GridProcessor()
    timings = dict.fromkeys(STAGES, 0.0)
    for i in range(0, len(values), batch_size):
        t0 = time.perf_counter()
        decoded = decode_batch(values[i : i + batch_size], contracts[i : i + batch_size],
                               now_ms=now, max_age_ms=40 * DAY_MS, max_future_ms=300_000)
        t1 = time.perf_counter()
        result = proc.process_batch(decoded.readings, now)
        t2 = time.perf_counter()
        encode_forecasts(result.forecasts)
        t3 = time.perf_counter()
        encode_anomalies(result.anomalies)
        t4 = time.perf_counter()
        if sink is not None:
            sink.write(result.forecasts, result.anomalies, [], now, readings=decoded.readings)
        t5 = time.perf_counter()
        parts = {k: result.timings.get(k, 0.0) for k in ("detectors", "nowcast", "online")}
        timings["decode"] += t1 - t0
        for k, v in parts.items():
            timings[f"core.{k}"] += v
        timings["core.other"] += (t2 - t1) - sum(parts.values())
        timings["encode_forecasts"] += t3 - t2
        timings["encode_anomalies"] += t4 - t3
        timings["clickhouse"] += t5 - t4
    return timings


def _table(n: int, timings: dict[str, float]) -> dict[str, dict[str, float]]:
    out = {}
    for key, seconds in [*timings.items(), ("total", sum(timings.values()))]:
        out[key] = {"seconds": round(seconds, 3), "records_per_s": round(n / seconds),
                    "us_per_record": round(1e6 * seconds / n, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 meters, 2 days")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--json", type=Path, default=RESULTS / "stages.json")
    ap.add_argument("--gc", choices=("default", "tuned", "ab"), default="tuned",
                    help="tuned: the GC policy of `gridstream run`; ab: alternate both, 3 rounds")
    ap.add_argument("--no-clickhouse", action="store_true")
    args = ap.parse_args(argv)
    meters, assets, days = (500, 20, 2) if args.quick else (2000, 50, 4)
    now = 1_795_000_000_000
    sim = TelemetrySimulator(SimConfig(meters=meters, assets=assets, seed=1), now - days * DAY_MS)
    records = sim.step_until(now)
    values, contracts = records.value, records.contract
    n = len(values)
    modes = ["default", "tuned"] * 3 if args.gc == "ab" else [args.gc]
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backend = None if args.no_clickhouse else ChdbBackend(tmp)
        for r, mode in enumerate(modes):
            sink = None
            if backend is not None:
                sink = ClickHouseSink(backend, f"bench{r}")
                sink.ensure_schema()
            _gc(mode)
            runs.setdefault(mode, []).append(
                stage_loop(values, contracts, now, args.batch_size, sink))
        gc.unfreeze()  # nothing frozen at exit (see streams.runtime.workers.gc_policy)
        if backend is not None:
            backend.close()
    report: dict[str, object] = {"records": n, "batch_size": args.batch_size, "meters": meters,
                                 "assets": assets, "days": days, "gc": args.gc}
    print(f"{n:,} records in batches of {args.batch_size:,}")
    for mode, loops in runs.items():
        best = {k: min(t[k] for t in loops) for k in STAGES}  # least disturbed of the rounds
        report[f"stages_gc_{mode}"] = table = _table(n, best)
        print(f"GC {mode} (best of {len(loops)})")
        print(f"{'stage':<18} {'records/s':>12} {'us/record':>10}")
        for key, row in table.items():
            print(f"{key:<18} {row['records_per_s']:12,} {row['us_per_record']:10.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
