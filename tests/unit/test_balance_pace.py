"""Pacing the repartition: a backlog read out of time order across partitions makes the balance
count readings late (the kill -9 test's failure), and pacing by ``ahead`` keeps it exact."""

from __future__ import annotations

import numpy as np

from models.balance import BalanceCore, BalanceParams
from models.topology import Topology
from streams.runtime.balance_pace import ahead, hold
from streams.sim.balance import BalanceSim, BalanceSimConfig

LATENESS_S = 2 * 3600
BATCH = 40


def test_only_partitions_past_the_slowest_undrained_one_by_the_budget_pause():
    newest = {"meter.0": 1_000, "meter.1": 5_000, "scada.0": 9_000}
    assert ahead(newest, set(), 3_000) == {"meter.1", "scada.0"}
    assert ahead(newest, {"meter.0"}, 3_000) == {"scada.0"}
    assert ahead(newest, set(newest), 3_000) == set()


def test_a_record_past_the_budget_is_held_with_the_rest_of_its_partition():
    newest = {"meter.0": 1_000}
    keys = ["scada.0", "scada.0", "meter.0", "scada.0", "meter.1"]
    held = hold(keys, [2_000, 9_000, 1_500, 3_000, None], newest, set(), 3_000)
    assert held == [False, True, False, True, False]
    assert newest == {"meter.0": 1_500, "scada.0": 2_000, "start": 1_500}


def logs(days: int) -> tuple[BalanceSim, dict[str, list[tuple]]]:
    """A small grid's meter and SCADA readings as two partitions, each in time order."""
    sim = BalanceSim(BalanceSimConfig(transformers=2, days=days, seed=4, case_share=0.0))
    parts: dict[str, list[tuple]] = {"meter": [], "scada": []}
    for i in range(days * 96):
        iv = sim.interval(i)
        parts["meter"] += zip(
            iv.meter_ids, ["meter"] * len(iv.meter_ids), iv.meter_ts, iv.meter_kw, strict=True
        )
        parts["scada"] += zip(
            iv.tx_ids, ["transformer"] * len(iv.tx_ids), iv.tx_ts, iv.tx_kw, strict=True
        )
    return sim, parts


def balance(sim: BalanceSim, records: list[tuple]) -> tuple[list, int]:
    topo = Topology()
    topo.apply(list(enumerate(sim.topology())))
    core = BalanceCore(BalanceParams(lateness_s=LATENESS_S), topo)
    ids, kinds, ts, kw = (np.array(c) for c in zip(*records, strict=True))
    out = core.process(ids.astype(object), kinds.astype(object), ts.astype(np.int64), kw)
    rows = [
        (r.interval_ms, r.parent_id.tolist(), r.children_kwh.round(6).tolist()) for r in out.rows
    ]
    return rows, out.late


def fetch(parts: dict[str, list[tuple]], budget_ms: int | None) -> list[tuple]:
    """A consumer's order: a batch from each unpaused partition in turn, SCADA first (its
    records span more time each), held and paused by ``hold``/``ahead`` unless ``budget_ms``
    is None."""
    pos, newest, out = dict.fromkeys(parts, 0), {}, []
    while any(pos[k] < len(v) for k, v in parts.items()):
        drained = {k for k in parts if pos[k] >= len(parts[k])}
        unseen = bool(set(parts) - drained - set(newest))
        paused = set() if budget_ms is None else ahead(newest, drained, budget_ms, unseen)
        for key in sorted(set(parts) - paused - drained, key=lambda k: k != "scada"):
            step = parts[key][pos[key] : pos[key] + BATCH * (4 if key == "scada" else 1)]
            if budget_ms is not None:
                held = hold(
                    [key] * len(step), [int(r[2]) for r in step], newest, drained, budget_ms, unseen
                )
                step = [r for r, h in zip(step, held, strict=True) if not h]
            pos[key] += len(step)
            out += step
    return out


def test_a_partition_read_ahead_by_more_than_the_lateness_makes_readings_late_unless_paced():
    sim, parts = logs(days=1)
    in_order = sorted(parts["meter"] + parts["scada"], key=lambda r: r[2])
    want, late = balance(sim, in_order)
    assert late == 0 and len(want) > 50
    unpaced, late = balance(sim, fetch(parts, None))
    assert late > 0 and unpaced != want  # the crash test's symptom: late, not balanced
    paced, late = balance(sim, fetch(parts, LATENESS_S // 4 * 1000))
    assert late == 0 and paced == want
