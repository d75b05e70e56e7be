"""``gridstream backtest`` as a user runs it: a separate process, files in, a CSV out.

No broker and no ClickHouse: a backtest needs neither.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tests.unit.test_backtest import meter_rows, readings, rfc3339

GRIDSTREAM = [sys.executable, "-m", "streams.cli"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    return subprocess.run(
        [*GRIDSTREAM, "backtest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )


def test_backtest_csv(tmp_path: Path) -> None:
    frame = readings(meters=3, days=4)
    frame["ts"] = [rfc3339(int(t)) if i % 2 else t for i, t in enumerate(frame["ts"])]
    frame["quality"] = "good"
    m2 = meter_rows(frame, "m-2")
    frame.loc[m2[3 * 96 + 10], "kw"] = "25.0"  # a spike
    frame.loc[m2[100], "kw"] = "abc"
    frame.loc[m2[101], "ts"] = ""
    frame.to_csv(tmp_path / "in.csv", index=False)

    run = _run(tmp_path, "--input", "in.csv", "--output", "out/scored.csv")
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"backtest: {len(frame):,} rows" in run.stdout
    assert "dead letters 2 (" in run.stdout and "invalid_type 1" in run.stdout

    out = pd.read_csv(tmp_path / "out" / "scored.csv", dtype={"ts": str})
    assert len(out) == len(frame)
    assert out["ts"].fillna("").tolist() == frame["ts"].astype(str).tolist()
    assert out["meter_id"].tolist() == frame["meter_id"].tolist()
    for h in (900, 3600):
        for q in ("p10", "p50", "p90"):
            assert f"{q}_{h}s" in out.columns
    assert out.loc[m2[100], "dead_letter"] == "invalid_type"
    assert out.loc[m2[101], "dead_letter"] == "missing_field"
    assert np.isnan(out.loc[m2[100], "anomaly_score"])
    assert np.isnan(out.loc[m2[0], "p50_900s"]) and np.isfinite(out.loc[m2[50], "p50_900s"])
    spike = m2[3 * 96 + 10]
    assert out.loc[spike, "anomaly_score"] >= 0.9
    assert out.loc[spike, "severity"] in ("warning", "critical")
    assert out["severity"].isna().sum() > len(out) * 0.9  # empty when below the thresholds


def test_backtest_parquet_with_configured_horizons(tmp_path: Path) -> None:
    frame = readings(meters=2, days=1).astype({"ts": "int64", "kw": "float64"})
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    env_run = subprocess.run(
        [*GRIDSTREAM, "backtest", "--input", "in.parquet", "--output", "out.csv"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")},
            "GRIDSTREAM_PROCESSING__HORIZONS_S": "[1800]",
        },
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert env_run.returncode == 0, env_run.stderr[-2000:]
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == len(frame)
    assert [c for c in out.columns if c.startswith("p50_")] == ["p50_1800s"]
    assert out["dead_letter"].isna().all()


def test_backtest_errors_are_clear(tmp_path: Path) -> None:
    missing = _run(tmp_path, "--input", "nope.csv", "--output", "out.csv")
    assert missing.returncode == 1
    assert "nope.csv does not exist" in missing.stderr
    (tmp_path / "bad.csv").write_text("id,ts,kw\na,0,1\n")
    bad = _run(tmp_path, "--input", "bad.csv", "--output", "out.csv")
    assert bad.returncode == 1
    assert "meter_id" in bad.stderr
    size = _run(tmp_path, "--input", "bad.csv", "--output", "out.csv", "--batch-size", "0")
    assert size.returncode == 2
    assert "--batch-size" in size.stderr
    assert not (tmp_path / "out.csv").exists()


def _backtest_on_a_terminal(tmp_path: Path, *extra: str) -> tuple[int, str]:
    """Run a backtest with stderr on a pseudo-terminal (as a person sees it); its output."""
    import pty

    readings(meters=2, days=2).to_csv(tmp_path / "in.csv", index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [*GRIDSTREAM, "backtest", "--input", "in.csv", "--output", "out.csv", *extra],
            env={**env, "COLUMNS": "120"}, stdout=subprocess.DEVNULL, stderr=secondary,
            timeout=240, cwd=tmp_path,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_progress_shows_on_a_terminal_and_not_with_quiet_or_in_a_pipe(tmp_path: Path) -> None:
    code, shown = _backtest_on_a_terminal(tmp_path)
    assert code == 0 and "backtest" in shown and "reading in.csv" in shown
    code, shown = _backtest_on_a_terminal(tmp_path, "--quiet")
    assert code == 0 and shown.strip() == ""
    piped = _run(tmp_path, "--input", "in.csv", "--output", "out.csv")  # stderr is a pipe
    assert piped.returncode == 0 and piped.stderr.strip() == ""
