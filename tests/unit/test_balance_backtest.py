"""The energy balance over files (``gridstream backtest --topology --scada``) computes what the
core computes interval by interval, and names refused topology lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.balance import BalanceCore
from models.topology import Topology
from streams.cli import main
from streams.sim.balance import BalanceSim, BalanceSimConfig, encode_topology, feed
from streams.tools.backtest_balance import balance_files

DAYS = 6


def _files(tmp: Path, sim: BalanceSim, days: int = DAYS) -> tuple[Path, Path, Path]:
    meters, scada, links = [], [], list(sim.topology())
    for i in range(days * 96):
        iv = sim.interval(i)
        links += iv.topology
        meters.append(
            pd.DataFrame({"meter_id": iv.meter_ids, "ts": iv.meter_ts, "kw": iv.meter_kw})
        )
        scada.append(
            pd.DataFrame(
                {
                    "asset_id": iv.tx_ids,
                    "asset_kind": "transformer",
                    "ts": iv.tx_ts,
                    "p_mw": np.round(iv.tx_kw / 1e3, 6),
                }
            )
        )
    paths = tmp / "meters.csv", tmp / "scada.csv", tmp / "topology.jsonl"
    pd.concat(meters).to_csv(paths[0], index=False)
    pd.concat(scada).to_csv(paths[1], index=False)
    bad = (
        b'{"child_id":"cm-x","child_kind":"meter","parent_id":"nowhere",'
        b'"parent_kind":"transformer","valid_from":0}'
    )
    lines = [v for _, v in encode_topology(links)] + [bad]
    paths[2].write_bytes(b"\n".join(lines) + b"\n")
    return paths


def test_balance_of_files_equals_the_core_and_reports_refused_topology(tmp_path: Path) -> None:
    cfg = BalanceSimConfig(
        transformers=8, days=DAYS, seed=12, case_share=0.5, cases=("theft",), start_day_min=4.5
    )
    meters, scada, topo_path = _files(tmp_path, BalanceSim(cfg))
    out, refused = balance_files(meters, scada, topo_path, tmp_path / "balance.csv")
    assert [r.error_class for r in refused] == ["topology_unknown_parent"]
    sim = BalanceSim(cfg)
    topo = Topology()
    topo.apply(list(enumerate(sim.topology())))
    core = BalanceCore(topology=topo)
    want = [r for i in range(DAYS * 96) for r in feed(core, sim.interval(i)).rows]
    got = pd.read_csv(tmp_path / "balance.csv")
    assert len(got) == sum(len(r) for r in want)
    expected = np.concatenate([r.residual_kwh for r in want])
    assert np.allclose(got["residual_kwh"].to_numpy(), expected, atol=1e-6)
    assert {e.entity_id for e in out.events} == {c.transformer for c in sim.cases}


def test_backtest_command_writes_the_balance_beside_its_output(tmp_path: Path, capsys) -> None:
    cfg = BalanceSimConfig(transformers=2, days=2, seed=1, case_share=0.0)
    meters, scada, topo_path = _files(tmp_path, BalanceSim(cfg), days=2)
    out = tmp_path / "scores.csv"
    code = main(
        [
            "backtest",
            "--input",
            str(meters),
            "--output",
            str(out),
            "--topology",
            str(topo_path),
            "--scada",
            str(scada),
        ]
    )
    assert code == 0
    assert "energy balance:" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "scores.balance.csv")) > 0
