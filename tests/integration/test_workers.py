"""``gridstream run --workers N``: real processes in one consumer group on the embedded broker."""

from __future__ import annotations

import ast
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

from tests.integration.conftest import wait_until
from tests.integration.helpers import committed, end_offsets, produce, read_all

pytestmark = pytest.mark.integration

GRIDSTREAM = [sys.executable, "-m", "streams.cli"]
PARTITIONS = 4
METERS = 40
PER_METER = 50


def _env(bootstrap: str, unique: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env.update(
        {
            "GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "GRIDSTREAM_KAFKA__GROUP_ID": f"g-{unique}",
            "GRIDSTREAM_KAFKA__PARTITIONS": str(PARTITIONS),
            "GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "GRIDSTREAM_CLICKHOUSE__BACKEND": "none",
            "GRIDSTREAM_HTTP_PORT": "0",
            "GRIDSTREAM_LOG_LEVEL": "INFO",
            **{
                f"GRIDSTREAM_TOPICS__{name.upper()}": f"{name}-{unique}"
                for name in ("meter", "scada", "forecasts", "anomalies", "dead_letters")
            },
            **extra,
        }
    )
    return env


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([*GRIDSTREAM, "run", "--workers", "2"], env=env, stderr=out)


def _meter_partitions(log: Path, topic: str) -> dict[int, set[int]]:
    """Each worker's current partitions of ``topic``, replayed from its assigned/revoked lines."""
    held: dict[int, set[int]] = {0: set(), 1: set()}
    for m in re.finditer(r"\[worker (\d)\]: (assigned|revoked) (\[.*\])", log.read_text()):
        worker, what, parts = int(m.group(1)), m.group(2), ast.literal_eval(m.group(3))
        mine = {p for t, p in parts if t == topic}
        held[worker] = mine if what == "assigned" else held[worker] - mine
    return held


def _readings(start_ms: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            f"w{m}".encode(),
            orjson.dumps({"meter_id": f"w{m}", "ts": start_ms + k * 900_000, "kw": 1 + k % 5}),
        )
        for k in range(PER_METER)
        for m in range(METERS)
    ]


def test_workers_refuse_embedded_chdb(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env["GRIDSTREAM_CLICKHOUSE__PATH"] = str(tmp_path / "chdb")
    run = subprocess.run(
        [*GRIDSTREAM, "run", "--workers", "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "GRIDSTREAM_CLICKHOUSE__BACKEND=chdb" in run.stderr
    assert "one process only" in run.stderr


def test_two_workers_share_partitions_process_each_reading_once_and_stop(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    env = _env(bootstrap, unique)
    meter = env["GRIDSTREAM_TOPICS__METER"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(meter, PARTITIONS, 1)]).values():
        fut.result(30)
    log = tmp_path / "workers.log"
    proc = _start(env, log)
    try:
        # both workers in the group, holding every input partition between them
        wait_until(
            "both workers to hold partitions",
            lambda: all(_meter_partitions(log, meter).values())
            and set().union(*_meter_partitions(log, meter).values()) == set(range(PARTITIONS)),
        )
        held = _meter_partitions(log, meter)
        assert not held[0] & held[1]
        records = _readings(int(time.time() * 1000) - 86_400_000)
        produce(bootstrap, meter, records)
        ends = end_offsets(bootstrap, meter, PARTITIONS)
        wait_until(
            "every reading committed",
            lambda: committed(bootstrap, f"g-{unique}", meter, PARTITIONS) == ends,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    consumed = {
        int(w): int(c)
        for w, c in re.findall(r"\[worker (\d)\]: stopped after \d+ batches: .*'consumed': (\d+)",
                               text)
    }
    assert set(consumed) == {0, 1} and all(consumed.values()), text[-3000:]
    assert sum(consumed.values()) == len(records)
    # each reading processed once: one forecast per reading (from its entity's third) and horizon
    forecasts = read_all(bootstrap, env["GRIDSTREAM_TOPICS__FORECASTS"], idle_s=2.0)
    keys = [
        (d["entity_id"], d["issued_at"], d["horizon_s"])
        for d in (orjson.loads(m.value()) for m in forecasts)
    ]
    assert len(keys) == len(set(keys)) == METERS * (PER_METER - 2) * 2


def test_a_worker_that_dies_stops_the_others_and_the_parent_fails(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    env = _env(bootstrap, unique)
    log = tmp_path / "workers.log"
    proc = _start(env, log)
    try:
        started = lambda: len(re.findall(r"worker \d started", log.read_text()))  # noqa: E731
        wait_until("two workers started", lambda: started() == 2)
        pids = [int(p) for p in re.findall(r"worker \d started: pid (\d+)", log.read_text())]
        wait_until("worker 1 subscribed", lambda: "[worker 1]" in log.read_text())
        os.kill(pids[1], signal.SIGKILL)
        status = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert status == 1, text[-3000:]
    assert f"worker 1 (pid {pids[1]}) exited with status -9" in text
    assert "all workers stopped" in text
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
