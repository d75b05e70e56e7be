"""Energy balance: topology rules, and the balance core on a grid that conserves energy."""

from __future__ import annotations

import numpy as np

from models.balance import BalanceCore
from models.topology import Topology
from schemas.topology import TopologyLink, decode_topology
from streams.sim.balance import BalanceSim, BalanceSimConfig, feed

DAY = 96


def link(child: str, ckind: str, parent: str, pkind: str, t: int, to: int | None = None):
    return TopologyLink(
        child_id=child,
        child_kind=ckind,
        parent_id=parent,
        parent_kind=pkind,
        valid_from=t,
        valid_to=to,
    )


def base() -> Topology:
    topo = Topology()
    refused = topo.apply(
        [
            (0, link("fd", "feeder", "sub", "substation", 0)),
            (1, link("tx1", "transformer", "fd", "feeder", 0)),
            (2, link("tx2", "transformer", "fd", "feeder", 0)),
        ]
    )
    assert refused == []
    return topo


def test_topology_refuses_unknown_parents_cycles_and_two_parents_with_a_reason():
    topo = base()
    refused = topo.apply(
        [
            (0, link("m1", "meter", "tx9", "transformer", 10)),
            (1, link("m2", "meter", "tx1", "transformer", 10, to=100)),
            (2, link("m2", "meter", "tx2", "transformer", 50)),
            (3, link("fd", "transformer", "fd", "feeder", 10)),
        ]
    )
    assert [(i, cls) for i, cls, _ in refused] == [
        (0, "topology_unknown_parent"),
        (2, "topology_two_parents"),
        (3, "topology_cycle"),
    ]
    assert all(reason for _, _, reason in refused)


def test_a_remapping_takes_effect_from_its_validity_time_and_a_resend_changes_nothing():
    topo = base()
    topo.apply([(0, link("m", "meter", "tx1", "transformer", 0))])
    topo.apply([(0, link("m", "meter", "tx2", "transformer", 1000))])
    version = topo.version
    topo.apply([(0, link("m", "meter", "tx2", "transformer", 1000))])
    assert topo.version == version
    assert [topo.parent_at("m", t) for t in (999, 1000)] == ["tx1", "tx2"]


def test_a_record_that_skips_a_level_or_is_not_json_is_a_dead_letter():
    ok = (
        b'{"child_id":"m","child_kind":"meter","parent_id":"t",'
        b'"parent_kind":"transformer","valid_from":0}'
    )
    bad = ok.replace(b'"transformer"', b'"feeder"')
    links, rejected = decode_topology([ok, bad, b"{", None])
    assert [i for i, _ in links] == [0]
    assert [(r.src_index, r.error_class) for r in rejected] == [
        (1, "topology_invalid"),
        (2, "malformed_json"),
        (3, "topology_tombstone"),
    ]


def fresh(sim: BalanceSim) -> BalanceCore:
    topo = Topology()
    assert topo.apply(list(enumerate(sim.topology()))) == []
    return BalanceCore(topology=topo)


def run(config: BalanceSimConfig, days: int, copies: int = 1):
    sim = BalanceSim(config)
    core = fresh(sim)
    events, rows = [], []
    for i in range(days * DAY):
        out = feed(core, sim.interval(i), copies)
        events += out.events
        rows += out.rows
    return sim, events, rows


def test_clean_grid_with_real_remappings_raises_no_balance_event():
    cfg = BalanceSimConfig(transformers=30, days=10, seed=3, case_share=0.4, cases=("remap",))
    sim, events, rows = run(cfg, 10)
    assert sum(c.kind == "remap" for c in sim.cases) >= 5
    assert events == []
    assert sum(int(r.missing.sum()) for r in rows) > 0  # missing meters were estimated
    assert all(np.isfinite(r.children_kwh).all() for r in rows)


def test_theft_is_found_within_a_day_and_the_thief_is_mostly_among_the_first_three_suspects():
    cfg = BalanceSimConfig(transformers=20, days=10, seed=5, case_share=0.5, cases=("theft",))
    sim, events, _ = run(cfg, 10)
    thefts = {c.transformer: c for c in sim.cases}
    found = {e.entity_id: e for e in events}
    assert set(found) == set(thefts)
    named = []
    for tx, case in thefts.items():
        e = found[tx]
        assert case.start_ms <= e.ts_ms <= case.start_ms + 86_400_000
        names = [x["feature"] for x in e.explanation if x["feature"].startswith("suspect:")]
        named.append(f"suspect:{case.meter}" in names[:3])
    assert len(named) >= 8 and sum(named) >= 0.8 * len(named), named


def test_redelivered_readings_do_not_change_the_balance():
    cfg = BalanceSimConfig(transformers=5, days=3, seed=2, case_share=0.0)
    _, _, once = run(cfg, 3)
    _, _, twice = run(cfg, 3, copies=2)
    assert [r.parent_kwh.tolist() for r in once] == [r.parent_kwh.tolist() for r in twice]
    assert [r.children_kwh.tolist() for r in once] == [r.children_kwh.tolist() for r in twice]


def test_a_restored_snapshot_continues_exactly():
    cfg = BalanceSimConfig(transformers=6, days=4, seed=4, case_share=0.5)
    _, _, rows_all = run(cfg, 4)
    sim = BalanceSim(cfg)
    core, rows = fresh(sim), []
    for i in range(4 * DAY):
        if i == DAY + 7:
            core = BalanceCore.loads(core.dumps(), core.topology)
        rows += feed(core, sim.interval(i)).rows
    assert [r.residual_kwh.tolist() for r in rows] == [r.residual_kwh.tolist() for r in rows_all]
    assert [r.log10p.tolist() for r in rows] == [r.log10p.tolist() for r in rows_all]


def test_the_output_does_not_depend_on_how_the_log_is_cut_into_batches():
    cfg = BalanceSimConfig(transformers=4, days=2, seed=6, case_share=0.0)
    sim = BalanceSim(cfg)
    cols = [[], [], [], []]
    for i in range(2 * DAY):
        iv = sim.interval(i)
        for ids, ts, kw, kind in (
            (iv.meter_ids, iv.meter_ts, iv.meter_kw, "meter"),
            (iv.tx_ids, iv.tx_ts, iv.tx_kw, "transformer"),
        ):
            cols[0].append(ids)
            cols[1].append(np.full(len(ids), kind, dtype=object))
            cols[2].append(ts)
            cols[3].append(kw)
    ids, kinds, ts, kw = (np.concatenate(c) for c in cols)
    outs = []
    for size in (len(ts), 997, 5000):
        core = fresh(BalanceSim(cfg))
        rows = []
        for a in range(0, len(ts), size):
            rows += core.process(
                ids[a : a + size], kinds[a : a + size], ts[a : a + size], kw[a : a + size]
            ).rows
        outs.append([(r.interval_ms, r.residual_kwh.tolist()) for r in rows])
    assert outs[0] == outs[1] == outs[2]
    assert len(outs[0]) > DAY
