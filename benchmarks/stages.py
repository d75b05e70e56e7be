"""Per-stage cost of the pipeline in one process, without Kafka: where the time goes.

Simulated telemetry (2,000 meters, 50 SCADA assets, 4 days: about 825k records) is cut into
batches and pushed through decode -> core -> encode (forecasts, anomalies) -> ClickHouse insert
(embedded chDB in a temporary directory). Prints records/s and microseconds per record for each
stage and in total, and writes ``benchmarks/results/stages.json``.

    python benchmarks/stages.py [--quick] [--batch-size 5000] [--json FILE]

The full Kafka benchmark (ceiling, latency, memory, scaling) is a later piece of work; this is
the profile it starts from.
"""

from __future__ import annotations

import argparse
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
from streams.simulation import SimConfig, TelemetrySimulator

RESULTS = Path(__file__).resolve().parent / "results"
DAY_MS = 86_400_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 meters, 2 days")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--json", type=Path, default=RESULTS / "stages.json")
    args = ap.parse_args(argv)
    meters, assets, days = (500, 20, 2) if args.quick else (2000, 50, 4)
    now = 1_795_000_000_000
    sim = TelemetrySimulator(SimConfig(meters=meters, assets=assets, seed=1), now - days * DAY_MS)
    records = sim.step_until(now)
    values, contracts = records.value, records.contract
    n = len(values)
    proc = GridProcessor()
    timings = dict.fromkeys(("decode", "core", "encode_forecasts", "encode_anomalies",
                             "clickhouse"), 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        backend = ChdbBackend(tmp)
        sink = ClickHouseSink(backend, "bench")
        sink.ensure_schema()
        for i in range(0, n, args.batch_size):
            t0 = time.perf_counter()
            decoded = decode_batch(values[i : i + args.batch_size],
                                   contracts[i : i + args.batch_size],
                                   now_ms=now, max_age_ms=40 * DAY_MS, max_future_ms=300_000)
            t1 = time.perf_counter()
            result = proc.process_batch(decoded.readings, now)
            t2 = time.perf_counter()
            encode_forecasts(result.forecasts)
            t3 = time.perf_counter()
            encode_anomalies(result.anomalies)
            t4 = time.perf_counter()
            sink.write(result.forecasts, result.anomalies, [], now, readings=decoded.readings)
            t5 = time.perf_counter()
            for key, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                               strict=True):
                timings[key] += dt
        backend.close()
    total = sum(timings.values())
    report = {"records": n, "batch_size": args.batch_size, "meters": meters, "assets": assets,
              "days": days, "stages": {}}
    print(f"{n:,} records in batches of {args.batch_size:,}")
    print(f"{'stage':<18} {'seconds':>8} {'records/s':>12} {'us/record':>10}")
    for key, seconds in [*timings.items(), ("total", total)]:
        report["stages"][key] = {"seconds": round(seconds, 3), "records_per_s": round(n / seconds),
                                 "us_per_record": round(1e6 * seconds / n, 2)}
        print(f"{key:<18} {seconds:8.2f} {n / seconds:12,.0f} {1e6 * seconds / n:10.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
