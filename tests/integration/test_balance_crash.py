"""kill -9 and the energy balance: ``gridstream run`` with the balance on, killed at random
moments while it works and started again, writes the same ``energy_balance`` rows as the pure
core computes offline, each once (the balance state survived every crash: restored from its
checkpoint and rebuilt by replaying the internal topic)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from sinks.clickhouse_backend import ChdbBackend
from streams.sim.balance import BalanceSim, BalanceSimConfig, encode, encode_topology
from streams.tools.broker import EmbeddedBroker
from tests.chserver import PASSWORD, USER
from tests.integration.helpers import offline_balance, produce

# six lives and a drain: longer than the suite's per-test bound
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

GRIDSTREAM = [sys.executable, "-m", "streams.cli", "run"]
DAYS, LIVES = 3, 6
LATENESS_S = 12 * 3600  # each life's slice is read as a backlog, in any order across topics


def _env(unique: str, bootstrap: str, port: int, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env.update(
        {
            f"GRIDSTREAM_TOPICS__{name.upper()}": f"{name}-{unique}"
            for name in ("meter", "scada", "forecasts", "anomalies", "dead_letters")
        },
        GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        GRIDSTREAM_KAFKA__GROUP_ID=f"g-{unique}",
        GRIDSTREAM_KAFKA__PARTITIONS="2",
        GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS="6000",
        GRIDSTREAM_KAFKA__BATCH_SIZE="300",
        GRIDSTREAM_CLICKHOUSE__BACKEND="server",
        GRIDSTREAM_CLICKHOUSE__HOST="127.0.0.1",
        GRIDSTREAM_CLICKHOUSE__PORT=str(port),
        GRIDSTREAM_CLICKHOUSE__USERNAME=USER,
        GRIDSTREAM_CLICKHOUSE__PASSWORD=PASSWORD,
        GRIDSTREAM_CLICKHOUSE__DATABASE=f"bcrash_{unique}",
        GRIDSTREAM_PROCESSING__STATE_DIR=str(state),
        GRIDSTREAM_BALANCE__ENABLED="true",
        GRIDSTREAM_BALANCE__TOPOLOGY_TOPIC=f"topo-{unique}",
        GRIDSTREAM_BALANCE__INTERNAL_TOPIC=f"bal-{unique}",
        GRIDSTREAM_BALANCE__LATENESS_S=str(LATENESS_S),
        GRIDSTREAM_BALANCE__CHECKPOINT_EVERY="2",
        GRIDSTREAM_HTTP_PORT="0",
    )
    return env


def _sim() -> BalanceSim:
    day = 86_400_000
    start = (int(time.time() * 1000) // day - DAYS - 1) * day
    return BalanceSim(BalanceSimConfig(transformers=3, days=DAYS, seed=9, case_share=0.0), start)


@pytest.fixture
def own_bootstrap(tmp_path: Path) -> Iterator[str]:
    """A broker of this test's own, so the tests before it in the session leave no trace here
    (on the shared broker the last life missed rows; the open defect is in docs/architecture.md)."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as running:
        yield running.bootstrap


def test_kill_9_while_balancing_leaves_the_rows_of_an_uninterrupted_run(
    own_bootstrap: str, unique: str, chserver: object, chdb_path: Path, tmp_path: Path
) -> None:
    bootstrap = own_bootstrap
    env = _env(unique, bootstrap, chserver.port, tmp_path / "state")  # type: ignore[attr-defined]
    topo_topic = env["GRIDSTREAM_BALANCE__TOPOLOGY_TOPIC"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    compact = {"cleanup.policy": "compact"}
    for fut in admin.create_topics([NewTopic(topo_topic, 1, 1, config=compact)]).values():
        fut.result(30)
    sim = _sim()
    produce(bootstrap, topo_topic, encode_topology(sim.topology()))
    ch, db = ChdbBackend(chdb_path), env["GRIDSTREAM_CLICKHOUSE__DATABASE"]

    def stored() -> dict[tuple[str, int], tuple[float, float]]:
        try:
            got = ch.query(
                "SELECT parent_id, toUnixTimestamp64Milli(interval_start), parent_kwh, "
                f"children_kwh FROM `{db}`.energy_balance FINAL"
            ).rows
        except Exception:  # noqa: BLE001 - the first life has not created the table yet
            return {}
        return {(p, int(t)): (round(a, 6), round(b, 6)) for p, t, a, b in got}

    cuts = [DAYS * 96 * k // (LIVES + 1) for k in range(LIVES + 2)]
    rng = random.Random(unique)
    for life in range(LIVES):
        send(bootstrap, env, sim, cuts[life], cuts[life + 1])
        log = open(tmp_path / f"life-{life}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(GRIDSTREAM, env=env, stdout=subprocess.DEVNULL, stderr=log)
        before = len(stored())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(stored()) == before:
            time.sleep(0.3)  # until this life has balanced something
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
    send(bootstrap, env, sim, cuts[LIVES], cuts[LIVES + 1])
    want = offline_balance(_sim(), DAYS, LATENESS_S)
    proc = subprocess.Popen(GRIDSTREAM, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a bound, not a target: it ends when all rows are in
    while time.monotonic() < deadline and len(stored()) < len(want):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert stored() == want
    copies = ch.query(f"SELECT count() FROM `{db}`.energy_balance").rows[0][0]
    assert copies >= len(want)  # replays may write a row again; FINAL counts it once


def send(bootstrap: str, env: dict[str, str], sim: BalanceSim, first: int, last: int) -> None:
    """Produce intervals [first, last) of meter and SCADA readings."""
    meters, scada = [], []
    for i in range(first, last):
        m, s = encode(sim.interval(i))
        meters += m
        scada += s
    produce(bootstrap, env["GRIDSTREAM_TOPICS__METER"], meters)
    produce(bootstrap, env["GRIDSTREAM_TOPICS__SCADA"], scada)
