"""The ``energy_balance`` table and its worst-parents view on the real engine (both backends):
a replayed interval counts once, and the parent with alarms comes first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_common import ClickHouseBackend

pytestmark = pytest.mark.integration


@pytest.fixture
def sink(ch_backend: ClickHouseBackend, unique: str) -> Iterator[ClickHouseSink]:
    out = ClickHouseSink(ch_backend, f"eb_{unique}")
    out.ensure_schema()
    yield out
    ch_backend.command(f"DROP DATABASE IF EXISTS `eb_{unique}`")


def row(parent: str, minute: int, residual: float, alarm: bool, written: int) -> str:
    suspects = '\'[{"meter": "m-1"}]\'' if alarm else "''"
    return (
        f"('{parent}', 'transformer', toDateTime64('2024-06-10 00:00:00', 3, 'UTC') + "
        f"INTERVAL {minute} MINUTE, 100, 97, 0, 2, {residual}, 0.03, 0.02, 1.0, -1.0, 20, 0, "
        f"{str(alarm).lower()}, {suspects}, toDateTime64({written}, 3, 'UTC'))"
    )


def test_worst_parents_view_ranks_the_alarming_parent_first_and_counts_a_replay_once(
    sink: ClickHouseSink, ch_backend: ClickHouseBackend, unique: str
) -> None:
    db = f"eb_{unique}"
    rows = [row("tx-a", 15 * k, 1.0, False, 1) for k in range(4)]
    rows += [row("tx-b", 15 * k, 9.0, k >= 2, 1) for k in range(4)]
    rows += [row("tx-b", 15 * k, 9.0, k >= 2, 2) for k in range(4)]  # the replayed intervals
    ch_backend.command(f"INSERT INTO `{db}`.energy_balance VALUES {', '.join(rows)}")
    got = ch_backend.query(
        f"SELECT parent_id, intervals, alarming_intervals, round(unexplained_ratio, 3), suspects "
        f"FROM `{db}`.energy_balance_worst"
    ).rows
    assert [tuple(r) for r in got] == [
        ("tx-b", 4, 2, 0.09, '[{"meter": "m-1"}]'),
        ("tx-a", 4, 0, 0.01, ""),
    ]


def test_balance_rows_of_the_core_are_written_once_even_when_written_twice(
    sink: ClickHouseSink, ch_backend: ClickHouseBackend, unique: str
) -> None:
    from models.balance import BalanceCore
    from models.topology import Topology
    from streams.sim.balance import BalanceSim, BalanceSimConfig, feed

    sim = BalanceSim(BalanceSimConfig(transformers=3, days=1, seed=1, case_share=0.0))
    topo = Topology()
    topo.apply(list(enumerate(sim.topology())))
    core = BalanceCore(topology=topo)
    rows = [r for i in range(40) for r in feed(core, sim.interval(i)).rows]
    sink.write_balance(rows, 1)
    sink.write_balance(rows, 2)  # a replay after a crash: stamped later, same rows
    n = ch_backend.query(f"SELECT count() FROM `eb_{unique}`.energy_balance FINAL").rows
    assert n == [(sum(len(r) for r in rows),)]
