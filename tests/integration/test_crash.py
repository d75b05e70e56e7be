"""kill -9, again and again: nothing lost, nothing doubled where the guarantee says so.

``gridstream run`` runs as a separate process on the embedded broker, writing ClickHouse over
HTTP (clickhouse-connect to the test endpoint, executing in this process's chDB) and checkpoints
to a state directory. Each life is killed with SIGKILL: either by a failpoint at a chosen step of
a batch (after processing, between its two outputs (Kafka and ClickHouse), between the outputs
and the commit, between the commit and the checkpoint) or from outside at a random moment while it
works. Then it is started again, until the whole workload is committed, and a last life stops
with SIGTERM. At the end:

- ClickHouse: every forecast, event, reading and dead letter exactly once as analysts count it
  (FINAL), with the values of an uninterrupted run (so window state survived every crash);
- topics, at-least-once: every forecast and event at least once, duplicates counted;
- topics, exactly-once: read committed, no record twice and none missing. The embedded broker
  does not filter aborted transactions for read_committed consumers, so aborted batches are
  identified from the log's own transaction markers (tests/integration/kafka_wire.py).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sinks.clickhouse_backend import ChdbBackend
from sinks.encode import rfc3339_ms
from streams.config import load_settings
from streams.runtime.failpoints import POINTS
from tests.chserver import PASSWORD, USER
from tests.integration.helpers import committed
from tests.integration.kafka_wire import aborted_offsets
from tests.integration.recovery import (
    assert_same_forecasts,
    forecast_map,
    meter_workload,
    produce_tracked,
    reference,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRIDSTREAM = [sys.executable, "-m", "streams.cli", "run"]
PARTITIONS = 3
LIVES = 12  # crash-restart cycles; half by failpoint, half by an outside kill -9


def _env(unique: str, bootstrap: str, port: int, state: Path, guarantee: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    topics = {
        f"GRIDSTREAM_TOPICS__{name.upper()}": f"{name}-{unique}"
        for name in ("meter", "scada", "forecasts", "anomalies", "dead_letters")
    }
    env.update(
        topics,
        GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        GRIDSTREAM_KAFKA__GROUP_ID=f"g-{unique}",
        GRIDSTREAM_KAFKA__PARTITIONS=str(PARTITIONS),
        GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS="6000",
        GRIDSTREAM_KAFKA__BATCH_SIZE="150",
        GRIDSTREAM_KAFKA__PROCESSING_GUARANTEE=guarantee,
        GRIDSTREAM_KAFKA__TRANSACTIONAL_ID=f"txn-{unique}",
        GRIDSTREAM_CLICKHOUSE__BACKEND="server",
        GRIDSTREAM_CLICKHOUSE__HOST="127.0.0.1",
        GRIDSTREAM_CLICKHOUSE__PORT=str(port),
        GRIDSTREAM_CLICKHOUSE__USERNAME=USER,
        GRIDSTREAM_CLICKHOUSE__PASSWORD=PASSWORD,
        GRIDSTREAM_CLICKHOUSE__DATABASE=f"crash_{unique}",
        GRIDSTREAM_PROCESSING__STATE_DIR=str(state),
        GRIDSTREAM_PROCESSING__CHECKPOINT_INTERVAL_S="1",
        GRIDSTREAM_HTTP_PORT="0",
        GRIDSTREAM_LOG_LEVEL="DEBUG",
    )
    return env


def _read(bootstrap: str, topic: str, read_committed: bool) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{time.time_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[Message] = []
    idle = time.monotonic()
    while time.monotonic() - idle < 3.0:
        msgs = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
        if msgs:
            out.extend(msgs)
            idle = time.monotonic()
    consumer.close()
    return out


def _visible(
    bootstrap: str, topic: str, exactly_once: bool, skipped: Counter[str] | None = None
) -> list[Message]:
    """What a subscriber sees; under exactly-once, records of aborted transactions left out
    (counted in ``skipped[topic]``)."""
    msgs = _read(bootstrap, topic, read_committed=exactly_once)
    if not exactly_once:
        return msgs
    aborted = aborted_offsets(bootstrap, topic, PARTITIONS)
    visible = [m for m in msgs if (m.partition(), m.offset()) not in aborted]
    if skipped is not None:
        skipped[topic] += len(msgs) - len(visible)
    return visible


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_kill_9_at_random_points_loses_nothing_and_clickhouse_counts_once(
    bootstrap: str, unique: str, chserver: object, chdb_path: Path, tmp_path: Path, guarantee: str
) -> None:
    exactly_once = guarantee == "exactly_once"
    env = _env(unique, bootstrap, chserver.port, tmp_path / "state", guarantee)  # type: ignore[attr-defined]
    meter_topic, group = env["GRIDSTREAM_TOPICS__METER"], env["GRIDSTREAM_KAFKA__GROUP_ID"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(meter_topic, PARTITIONS, 1)]).values():
        fut.result(30)
    now_ms = int(time.time() * 1000)
    records = meter_workload(now_ms, meters=15, steps=240, bad_every=150)
    # one slice of the workload per life, so that every life has work when it is killed
    cuts = np.linspace(0, len(records), LIVES + 2).astype(int)
    coords: list[tuple[int, int]] = []
    ends = [0] * PARTITIONS

    def produce_slice(k: int) -> None:
        new = produce_tracked(bootstrap, meter_topic, records[cuts[k] : cuts[k + 1]])
        coords.extend(new)
        for part, off in new:
            ends[part] = max(ends[part], off + 1)

    def progress() -> list[int]:
        return [max(0, o) for o in committed(bootstrap, group, meter_topic, PARTITIONS)]

    rng = random.Random(f"{unique}-{guarantee}")
    crashes: Counter[str] = Counter()
    for life in range(LIVES):
        produce_slice(life)
        life_env = dict(env)
        by_failpoint = life % 2 == 0
        if by_failpoint:
            point = POINTS[(life // 2) % len(POINTS)]
            life_env["GRIDSTREAM_FAILPOINTS"] = f"{point}=0.5"
            life_env["GRIDSTREAM_FAILPOINTS_SEED"] = str(life)
        log = open(tmp_path / f"life-{life}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(GRIDSTREAM, env=life_env, stdout=subprocess.DEVNULL, stderr=log)
        start = progress()
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            now = progress()
            if now == ends:
                break
            if not by_failpoint and now != start:  # working: kill it at a random moment
                time.sleep(rng.uniform(0.0, 0.5))
                break
            time.sleep(0.2)
        killed_by_test = proc.poll() is None
        if killed_by_test:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
        err = (tmp_path / f"life-{life}.log").read_bytes()
        assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
        fired = re.search(rb"failpoint (\w+): SIGKILL", err)
        crashes[fired.group(1).decode() if fired and not killed_by_test else "kill -9"] += 1

    # the last life: no faults, runs to the end, SIGTERM stops it cleanly
    produce_slice(LIVES)
    proc = subprocess.Popen(GRIDSTREAM, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started, deadline = time.monotonic(), time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress() == ends and time.monotonic() - started > 8:  # up, joined, idle
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert progress() == ends, "the workload was not committed to the end"
    (tmp_path / f"life-{LIVES}.log").write_bytes(err)
    assert not _error_lines(tmp_path), "\n".join(_error_lines(tmp_path)[:20])
    assert sum(crashes.values()) == LIVES, crashes
    assert len(set(crashes) - {"kill -9"}) >= 2, f"too few failpoints fired: {crashes}"

    try:
        _verify(env, bootstrap, chdb_path, records, coords, now_ms, crashes, exactly_once)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_digest(tmp_path)}") from None


def _error_lines(tmp_path: Path) -> list[str]:
    """ERROR lines any life logged: a restore, a replay or a crash elsewhere must not make a
    life fail a batch or a metric (the chaos check's criterion)."""
    return [
        f"{path.name}: {ln[:300]}"
        for path in sorted(tmp_path.glob("life-*.log"))
        for ln in path.read_text(errors="replace").splitlines()
        if " ERROR " in ln or " CRITICAL " in ln
    ]


def _digest(tmp_path: Path) -> str:
    """What each life did about state, to read when a check fails."""
    keep = ("state from", "duplicates", "replaying", "checkpoint", "failpoint", "WARNING", "rror")
    out = []
    for path in sorted(tmp_path.glob("life-*.log")):
        lines = [
            ln for ln in path.read_text(errors="replace").splitlines() if any(k in ln for k in keep)
        ]
        out.append(f"--- {path.name}\n" + "\n".join(ln[:240] for ln in lines[-40:]))
    return "\n".join(out)


def _verify(
    env: dict[str, str],
    bootstrap: str,
    chdb_path: Path,
    records: list[tuple[bytes, bytes]],
    coords: list[tuple[int, int]],
    now_ms: int,
    crashes: Counter[str],
    exactly_once: bool,
) -> None:
    guarantee = env["GRIDSTREAM_KAFKA__PROCESSING_GUARANTEE"]
    settings = load_settings(processing={"state_dir": None}, kafka={"bootstrap_servers": bootstrap})
    want = reference(settings, records, coords, now_ms)

    # -- ClickHouse: once, as analysts count it, with an uninterrupted run's values
    ch = ChdbBackend(chdb_path)
    db = env["GRIDSTREAM_CLICKHOUSE__DATABASE"]

    def rows(sql: str) -> list[tuple]:
        return ch.query(sql.replace("{db}", db)).rows

    fc = rows(
        "SELECT entity_id, toUnixTimestamp64Milli(issued_at), horizon_s, p10, p50, p90 "
        "FROM {db}.forecasts FINAL"
    )
    issued = rfc3339_ms(np.array([r[1] for r in fc], dtype=np.int64)).tolist()
    got = {(r[0], at, r[2]): tuple(r[3:]) for r, at in zip(fc, issued, strict=True)}
    assert len(got) == len(fc)
    assert_same_forecasts(got, want.forecasts)
    events = rows("SELECT event_id FROM {db}.anomalies FINAL")
    assert sorted(e for (e,) in events) == sorted(want.events) and want.events
    assert rows("SELECT count() FROM {db}.readings FINAL") == [(want.readings,)]
    assert rows("SELECT count() FROM {db}.dead_letters FINAL") == [(want.dead_letters,)]

    # -- topics
    skipped: Counter[str] = Counter()  # records of aborted transactions the wire parser removed
    forecasts = _visible(bootstrap, env["GRIDSTREAM_TOPICS__FORECASTS"], exactly_once, skipped)
    fmap = forecast_map([m.value() for m in forecasts])
    assert_same_forecasts(fmap, want.forecasts)
    duplicates = len(forecasts) - len(fmap)
    anomalies = _visible(bootstrap, env["GRIDSTREAM_TOPICS__ANOMALIES"], exactly_once, skipped)
    event_ids = Counter(orjson.loads(m.value())["event_id"] for m in anomalies)
    assert set(event_ids) == want.events
    dead = _visible(bootstrap, env["GRIDSTREAM_TOPICS__DEAD_LETTERS"], exactly_once, skipped)
    if exactly_once:
        # the abort path is proven, not assumed: a crash inside a transaction (before_commit)
        # left it to be aborted by the next life, and its records reached the consumer and
        # were skipped only because the log's abort marker says so
        assert crashes["before_commit"] >= 1, crashes
        assert sum(skipped.values()) >= 1, f"no aborted transaction was skipped: {crashes}"
    dead_sources = Counter(
        (h["__connect.errors.partition"], h["__connect.errors.offset"])
        for h in (dict(m.headers() or []) for m in dead)
    )
    print(
        f"\n{guarantee}: {sum(crashes.values())} crashes {dict(crashes)}, {len(records)} records, "
        f"{len(want.forecasts)} forecasts, {len(want.events)} events; lost 0; topic duplicates: "
        f"forecasts {duplicates}, events {sum(event_ids.values()) - len(event_ids)}, dead "
        f"letters {sum(dead_sources.values()) - len(dead_sources)}"
    )
    if exactly_once:
        assert duplicates == 0
        assert max(event_ids.values()) == 1
        assert len(dead) == want.dead_letters
