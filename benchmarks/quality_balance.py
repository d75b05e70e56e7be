"""Quality of the energy balance on the conserving grid simulator (``streams.sim.balance``).

    python -m benchmarks.quality_balance [--seed N ...] [--json F]

Per seed, two runs of ``--transformers`` transformers over ``--days`` days:

- labelled: half the transformers get one case each (theft 30-90 %, drift, mis-mapping, rising
  loss, a real re-mapping), starting from day 4;
- clean: the same grid with only real re-mappings (a third of the transformers), which must
  raise nothing.

Reported (fractions in 0-1):

- ``theft_recall``: thefts with an event on their transformer within 24 h of the start;
  ``theft_median_delay_h``; ``theft_precision``: events matched to a theft over those plus the
  events that match no labelled case (false alarms of the labelled run);
- ``top1_suspect_rate`` / ``top3_suspect_rate``: of the detected thefts, the thief ranked first
  / in the first three suspects of the event;
- ``mismap_found_rate``: mis-mapped meters named in the first three suspects of an event on
  either transformer within 48 h;
- ``drift_found_rate`` (the drifting meter in the first three suspects of an event) and
  ``loss_rise_found_rate`` (an event on the transformer), any time before the end: no targets;
- ``false_alarms_per_1000_tx_days``: events of the clean run per 1,000 transformer-days from day
  4 on (the balance cannot alarm before: two days of warm-up, two of tail).

Seeds: the parameters of ``models.balance.BalanceParams`` and the suspect ranking were chosen
looking at seeds 1-3 (and the unit tests' seeds 2-9) only. Seeds 101-103 were reported once with
an earlier suspect ranking (kW closest to the gap: top-3 77 %); the ranking was then changed on
seeds 1-3 (a likelihood ratio per meter), so the headline is on fresh seeds 201-203, the default.
``cost_us_per_reading`` is the core's time (no simulation, no I/O) per meter or SCADA reading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.balance import BalanceCore
from models.topology import Topology
from schemas.batch import AnomalyRecord
from streams.sim.balance import BalanceSim, BalanceSimConfig, Case, feed

REPORT_SEEDS = (201, 202, 203)
_H = 3_600_000
_SCORED_FROM_DAY = 4


def simulate(cfg: BalanceSimConfig) -> tuple[BalanceSim, list[AnomalyRecord], float, int]:
    """Run the balance over a simulated grid: its cases, events, seconds and readings."""
    sim = BalanceSim(cfg)
    topo = Topology()
    topo.apply(list(enumerate(sim.topology())))
    core = BalanceCore(topology=topo)
    events: list[AnomalyRecord] = []
    readings, spent = 0, 0.0
    for i in range(cfg.days * 96):
        iv = sim.interval(i)
        t0 = time.perf_counter()
        events += feed(core, iv).events
        spent += time.perf_counter() - t0
        readings += len(iv.meter_ids) + len(iv.tx_ids)
    return sim, events, spent, readings


def suspects(e: AnomalyRecord) -> list[str]:
    return [x["feature"][8:] for x in e.explanation if str(x["feature"]).startswith("suspect:")]


def matches(e: AnomalyRecord, case: Case) -> bool:
    on = e.entity_id in (case.transformer, case.other)
    return on and e.ts_ms >= case.start_ms - _H


def score_labelled(sim: BalanceSim, events: list[AnomalyRecord]) -> dict[str, list]:
    """Per-case outcomes of one labelled run."""
    out: dict[str, list] = {
        "theft": [],
        "delay_h": [],
        "top1": [],
        "top3": [],
        "mismap": [],
        "drift": [],
        "loss_rise": [],
    }
    out["unmatched"] = [e for e in events if not any(matches(e, c) for c in sim.cases)]
    out["theft_events"] = [
        e for e in events if any(matches(e, c) for c in sim.cases if c.kind == "theft")
    ]
    for case in sim.cases:
        near = [e for e in events if matches(e, case)]
        if case.kind == "theft":
            hit = [
                e
                for e in near
                if e.entity_id == case.transformer and e.ts_ms - case.start_ms <= 24 * _H
            ]
            out["theft"].append(bool(hit))
            if hit:
                out["delay_h"].append((hit[0].ts_ms - case.start_ms) / _H)
                out["top1"].append(suspects(hit[0])[:1] == [case.meter])
                out["top3"].append(case.meter in suspects(hit[0])[:3])
        elif case.kind == "mismap":
            soon = [e for e in near if e.ts_ms - case.start_ms <= 48 * _H]
            out["mismap"].append(any(case.meter in suspects(e)[:3] for e in soon))
        elif case.kind in ("drift", "loss_rise"):  # found at all, for drift with its meter named
            named = [e for e in near if case.kind == "loss_rise" or case.meter in suspects(e)[:3]]
            out[case.kind].append(bool(named))
    return out


def run_seed(seed: int, transformers: int, days: int) -> dict[str, object]:
    labelled = BalanceSimConfig(transformers=transformers, days=days, seed=seed)
    sim, events, spent, readings = simulate(labelled)
    scored = score_labelled(sim, events)
    clean = BalanceSimConfig(
        transformers=transformers, days=days, seed=seed, case_share=0.3, cases=("remap",)
    )
    _, clean_events, spent2, readings2 = simulate(clean)
    return {
        "seed": seed,
        **scored,
        "clean_events": len(clean_events),
        "clean_tx_days": transformers * (days - _SCORED_FROM_DAY),
        "seconds": spent + spent2,
        "readings": readings + readings2,
    }


def cost_per_reading(transformers: int, days: int, seed: int = 0) -> dict[str, float]:
    """µs of the balance core (placing readings, closing intervals, scoring) per reading, on a
    clean grid of ``transformers`` (about 19 meters each); for ``gridstream bench``."""
    cfg = BalanceSimConfig(transformers=transformers, days=days, seed=seed, case_share=0.0)
    _, _, seconds, readings = simulate(cfg)
    return {
        "balance_us_per_reading": round(1e6 * seconds / readings, 3),
        "balance_readings": readings,
        "balance_meters": int(BalanceSim(cfg).meter_ids.shape[0]),
    }


def _rate(xs: Sequence[bool]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def summarise(runs: list[dict]) -> dict[str, object]:
    theft = [x for r in runs for x in r["theft"]]
    tp = sum(len(r["theft_events"]) for r in runs)
    fp = sum(len(r["unmatched"]) for r in runs)
    delays = [x for r in runs for x in r["delay_h"]]
    return {
        "seeds": [r["seed"] for r in runs],
        "theft_cases": len(theft),
        "theft_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "theft_recall": _rate(theft),
        "theft_median_delay_h": statistics.median(delays) if delays else float("nan"),
        "top1_suspect_rate": _rate([x for r in runs for x in r["top1"]]),
        "top3_suspect_rate": _rate([x for r in runs for x in r["top3"]]),
        "mismap_cases": sum(len(r["mismap"]) for r in runs),
        "mismap_found_rate": _rate([x for r in runs for x in r["mismap"]]),
        "drift_found_rate": _rate([x for r in runs for x in r["drift"]]),
        "loss_rise_found_rate": _rate([x for r in runs for x in r["loss_rise"]]),
        "false_alarms_per_1000_tx_days": 1000.0
        * sum(r["clean_events"] for r in runs)
        / sum(r["clean_tx_days"] for r in runs),
        "labelled_run_unmatched_events": fp,
        "clean_tx_days": sum(r["clean_tx_days"] for r in runs),
        "cost_us_per_reading": 1e6
        * sum(r["seconds"] for r in runs)
        / sum(r["readings"] for r in runs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality_balance", description=__doc__)
    ap.add_argument("--seed", type=int, action="append", help="repeatable; default 201 202 203")
    ap.add_argument("--transformers", type=int, default=100)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    runs = [run_seed(s, args.transformers, args.days) for s in args.seed or REPORT_SEEDS]
    figures = summarise(runs)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
