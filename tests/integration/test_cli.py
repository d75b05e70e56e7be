"""The ``gridstream`` command as a user runs it: separate processes, real broker, real chDB."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.helpers import committed, end_offsets, produce

pytestmark = pytest.mark.integration

GRIDSTREAM = [sys.executable, "-m", "streams.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env.update({"GRIDSTREAM_CLICKHOUSE__PATH": str(tmp_path / "chdb"), **extra})
    return env


def test_demo_then_query(tmp_path: Path) -> None:
    demo = subprocess.run(
        [*GRIDSTREAM, "demo", "--seconds", "12", "--meters", "40", "--assets", "4"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    out = demo.stdout
    assert "== summary" in out
    for needle in (
        "readings produced",
        "detection vs injected labels",
        "nowcast error",
        "horizon   900 s",
        "anomaly events",
    ):
        assert needle in out
    produced = int(re.search(r"readings produced ([\d,]+)", out).group(1).replace(",", ""))
    consumed = int(re.search(r"consumed ([\d,]+)", out).group(1).replace(",", ""))
    assert produced > 0 and consumed == produced
    rows = int(re.search(r"anomalies ([\d,]+), dead letters", out).group(1).replace(",", ""))
    assert rows > 0
    # it ends with the path of its report, written beside the data with the labels it shows
    report = re.search(r"open it in a browser \(it works offline\): (\S+)\n", out)
    assert report is not None and out.rstrip().endswith("--output FILE")
    page = Path(report.group(1)).read_text()
    assert page.startswith("<!doctype html>") and "Labelled windows" in page
    assert (tmp_path / "demo-labels.jsonl").stat().st_size > 0

    query = subprocess.run(
        [*GRIDSTREAM, "query", "SELECT count() FROM anomalies FINAL"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert query.returncode == 0, query.stderr[-2000:]
    assert query.stdout.split()[:3] == ["count()", "-------", str(rows)]


def test_bad_setting_stops_with_its_name(tmp_path: Path) -> None:
    run = subprocess.run(
        [*GRIDSTREAM, "run"],
        env=_env(tmp_path, GRIDSTREAM_KAFKA__BATCH_SIZE="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "GRIDSTREAM_KAFKA__BATCH_SIZE" in run.stderr


def test_sigterm_finishes_batch_commits_and_exits_zero(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topics = {
        f"GRIDSTREAM_TOPICS__{name.upper()}": f"{name}-{unique}"
        for name in ("meter", "scada", "forecasts", "anomalies", "dead_letters")
    }
    env = _env(
        tmp_path,
        GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        GRIDSTREAM_KAFKA__GROUP_ID=f"g-{unique}",
        GRIDSTREAM_KAFKA__PARTITIONS="2",
        GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS="6000",
        GRIDSTREAM_HTTP_PORT="0",
        **topics,
    )
    start = int(time.time() * 1000) - 3_600_000 * 24
    records = [
        (
            f"m{i % 20}".encode(),
            orjson.dumps(
                {
                    "meter_id": f"m{i % 20}",
                    "ts": start + (i // 20) * 900_000,
                    "kw": 1.0 + (i % 7) * 0.1,
                }
            ),
        )
        for i in range(2000)
    ]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topics["GRIDSTREAM_TOPICS__METER"], 2, 1)]).values():
        fut.result(30)
    produce(bootstrap, topics["GRIDSTREAM_TOPICS__METER"], records)
    proc = subprocess.Popen(
        [*GRIDSTREAM, "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    meter_topic = topics["GRIDSTREAM_TOPICS__METER"]
    group = f"g-{unique}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait until it has committed something
        if any(off > 0 for off in committed(bootstrap, group, meter_topic, 2)):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM" in err
    assert committed(bootstrap, group, meter_topic, 2) == end_offsets(bootstrap, meter_topic, 2)


def test_bench_runs_the_harness_as_its_own_module_and_returns_its_status() -> None:
    from streams.cli import bench_command, run_child

    cmd = bench_command(quick=True, json_path="out.json")
    assert cmd == [sys.executable, "-m", "benchmarks.harness", "--quick", "--json", "out.json"]
    assert bench_command(True, None, quiet=True)[-1] == "--quiet"
    assert bench_command(quick=False, json_path=None)[1:] == ["-m", "benchmarks.harness"]
    usage = subprocess.run(
        [*cmd[:3], "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert "--quick" in usage.stdout and "--json" in usage.stdout
    assert run_child([*cmd[:3], "--no-such-option"]) == 2  # argparse's status, passed back
    assert run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 15)"]) == 143
