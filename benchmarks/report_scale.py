"""How long reports take and how big they get.

1. ``gridstream backtest --report`` on the 25 NAB files (one meter per file, as
   ``benchmarks/quality_nab.py`` builds them; one batch of everything), with NAB's windows as
   labels: the command's wall time, and the report's share of it.
2. A synthetic fleet of 1,000 meters over one week (15-minute readings, two horizons, 3,000
   events): the file's size, the time to write it, and, where Debian's ``chromium`` is installed,
   the time until the page has drawn an entity in headless Chromium.

    python -m benchmarks.report_scale [--json FILE]

Writes ``benchmarks/results/report_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.quality_nab import RESULTS, SHARED, nab_files, nab_frame
from streams.tools.report import write_report
from streams.tools.report_input import ReportInput

DAY_MS = 86_400_000


def nab_backtest_report(tmp: Path, nab_dir: Path) -> dict:
    frame = nab_frame(nab_files(nab_dir))
    source = tmp / "nab.csv"
    frame[["meter_id", "ts", "kw"]].to_csv(source, index=False)
    cmd = [sys.executable, "-m", "streams.cli", "backtest", "--input", str(source),
           "--output", str(tmp / "nab_out.csv"), "--batch-size", "1000000",
           "--report", str(tmp / "nab.html"),
           "--labels", str(nab_dir / "labels" / "combined_windows.json")]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    report_s = float(done.stdout.rsplit(" in ", 1)[1].split(" s")[0])
    return {"rows": len(frame), "wall_s": round(wall, 1), "report_s": report_s,
            "size_mb": round((tmp / "nab.html").stat().st_size / 1e6, 1),
            "output": done.stdout.strip().splitlines()[-1]}


def fleet_input(entities: int = 1000, days: int = 7, events: int = 3000) -> ReportInput:
    rng = np.random.default_rng(1)
    n = days * 96
    t0 = 1_700_000_000_000 // 900_000 * 900_000
    ids = np.repeat([f"m-{i:04d}" for i in range(entities)], n)
    ts = np.tile(t0 + 900_000 * np.arange(n), entities)
    value = 2 + np.sin(ts / DAY_MS * 2 * np.pi) + rng.normal(0, 0.2, ts.size)
    readings = pd.DataFrame({"entity_kind": "meter", "entity_id": ids, "ts_ms": ts,
                             "value": value})
    parts = []
    for h in (900, 3600):
        p50 = value + rng.normal(0, 0.1, ts.size)
        parts.append(pd.DataFrame({"entity_kind": "meter", "entity_id": ids, "horizon_s": h,
                                   "target_ms": ts + h * 1000, "p10": p50 - 0.4, "p50": p50,
                                   "p90": p50 + 0.4}))
    k = rng.choice(ts.size, events, replace=False)
    explanation = [{"feature": "kw", "value": 1.0, "expected": 2.0, "deviation": -3.0}]
    ev = pd.DataFrame({"entity_kind": "meter", "entity_id": ids[k], "ts_ms": ts[k],
                       "score": 0.9, "severity": rng.choice(["info", "warning", "critical"],
                                                            events),
                       "detectors": [{"residual": 0.9}] * events, "fired": [["residual"]] * events,
                       "explanation": [explanation] * events})
    return ReportInput("1,000 meters", "synthetic", (900, 3600), readings,
                       pd.concat(parts, ignore_index=True), ev)


def fleet_report(tmp: Path) -> dict:
    summary = write_report(fleet_input(), tmp / "fleet.html")
    out = {"entities": summary.entities, "size_mb": round(summary.size_bytes / 1e6, 1),
           "write_s": round(summary.seconds, 1)}
    browser = shutil.which("chromium")
    if browser:
        started = time.perf_counter()
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
             "--virtual-time-budget=30000", summary.path.as_uri() + "#entity=meter%3Am-0500"],
            capture_output=True, text=True, timeout=300,
        ).stdout
        out["chromium_open_and_draw_s"] = round(time.perf_counter() - started, 1)
        out["drawn"] = 'data-rendered="true"' in dom and 'data-entity="meter:m-0500"' in dom
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=RESULTS / "report_scale.json")
    ap.add_argument("--data", type=Path, default=SHARED / "data", help="the shared data folder")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if (args.data / "nab" / "data").is_dir():
            results["nab_backtest_report"] = nab_backtest_report(Path(tmp), args.data / "nab")
        results["fleet_1000"] = fleet_report(Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
