"""The energy balance live, on the real broker and chDB: the second stage through the internal
topic gives the rows the pure core gives offline, bad topology is dead-lettered with its reason,
and a restarted stage resumes from its checkpoint without a row or an event twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from streams.config import BalanceSettings, Settings
from streams.runtime.balance_stage import BalanceStage, ensure_balance_topics
from streams.runtime.runner import ensure_topics
from streams.sim.balance import BalanceSim, BalanceSimConfig, encode, encode_topology
from tests.integration.conftest import make_settings, wait_until
from tests.integration.helpers import offline_balance, produce

pytestmark = pytest.mark.integration

DAYS = 3
LATENESS_S = 6 * 3600  # readings are produced in chunks of CHUNK intervals, read in any order
CHUNK = 12


def _settings(bootstrap: str, unique: str, chdb_path: Path, state: Path) -> Settings:
    base = make_settings(bootstrap, unique, chdb_path, partitions=2, state_dir=state)
    balance = BalanceSettings(
        enabled=True,
        topology_topic=f"topo-{unique}",
        internal_topic=f"bal-{unique}",
        lateness_s=LATENESS_S,
        checkpoint_every=3,
    )
    return base.model_copy(update={"balance": balance})


def _sim() -> BalanceSim:
    day = 86_400_000
    start = (int(time.time() * 1000) // day - DAYS - 1) * day
    cfg = BalanceSimConfig(transformers=3, days=DAYS, seed=7, case_share=0.0)
    return BalanceSim(cfg, start_ms=start)


def _produce(settings: Settings, sim: BalanceSim, first: int, last: int) -> int:
    """Produce intervals [first, last) of meter and SCADA readings; how many records."""
    t, bootstrap = settings.topics, settings.kafka.bootstrap_servers
    meters, scada = [], []
    for i in range(first, last):
        m, s = encode(sim.interval(i))
        meters += m
        scada += s
    produce(bootstrap, t.meter, meters)
    produce(bootstrap, t.scada, scada)
    return len(meters) + len(scada)


def _live(settings: Settings, sink: ClickHouseSink, sim: BalanceSim, first: int, last: int):
    """A life of the stage while the readings of [first, last) arrive chunk by chunk, as they
    would live (a chunk waits until the stage forwarded the one before)."""
    stage, stop = BalanceStage(settings, sink), threading.Event()
    thread = threading.Thread(target=stage.run, args=(stop,), daemon=True)
    thread.start()
    sent = 0
    for i in range(first, last, CHUNK):
        sent += _produce(settings, sim, i, min(i + CHUNK, last))
        wait_until("chunk forwarded", lambda n=sent: stage.counters["balance_forwarded"] >= n, 60)
    c = stage.counters
    wait_until("balanced", lambda: c["balance_consumed"] >= c["balance_forwarded"], 60)
    stop.set()
    thread.join(30)
    return stage


def _stored(sink: ClickHouseSink) -> dict[tuple[str, int], tuple[float, float]]:
    got = sink.query(
        f"SELECT parent_id, toUnixTimestamp64Milli(interval_start), parent_kwh, children_kwh "
        f"FROM `{sink.database}`.energy_balance FINAL"
    ).rows
    return {(p, int(t)): (round(a, 6), round(b, 6)) for p, t, a, b in got}


def test_the_live_balance_equals_the_offline_core_and_resumes_after_a_restart(
    bootstrap: str, unique: str, chdb_path: Path, tmp_path: Path
) -> None:
    settings = _settings(bootstrap, unique, chdb_path, tmp_path)
    ensure_topics(settings)
    ensure_balance_topics(settings)
    sim = _sim()
    bad = [
        (
            b"cm-x",
            b'{"child_id":"cm-x","child_kind":"meter","parent_id":"dtx-99999",'
            b'"parent_kind":"transformer","valid_from":0}',
        ),
        (b"cm-y", b'{"child_id":"cm-y","child_kind":"meter"}'),
    ]
    produce(bootstrap, settings.balance.topology_topic, encode_topology(sim.topology()) + bad)
    sink = ClickHouseSink(ChdbBackend(chdb_path), settings.clickhouse.database)
    sink.ensure_schema()
    first = _live(settings, sink, sim, 0, DAYS * 96 // 2)
    assert first.counters["balance_rows"] > 0, first.counters
    assert first.counters["balance_checkpoints"] > 0
    # a new life: restores its checkpoints, replays what came after them
    second = _live(settings, sink, sim, DAYS * 96 // 2, DAYS * 96)
    assert second.counters["balance_restores"] > 0, (second.counters, list(tmp_path.rglob("*")))
    want, got = offline_balance(_sim(), DAYS, LATENESS_S), _stored(sink)
    assert got == want
    assert len(want) > 3 * 96
    total = first.counters["balance_rows"] + second.counters["balance_rows"]
    assert total == len(want)  # nothing written twice
    dead = sink.query(
        f"SELECT error_class FROM `{sink.database}`.dead_letters FINAL ORDER BY error_class"
    ).rows
    assert [d[0] for d in dead] == ["topology_invalid", "topology_unknown_parent"]
    assert np.isfinite([v for pair in got.values() for v in pair]).all()
