"""A grid where energy is conserved: transformers, the meters under them, and labelled losses.

Unlike the main simulator (whose meters each stand for many customers), every meter here is
one customer and every distribution transformer's SCADA power is what physically flows through
it: the true consumption of the meters *physically* under it, plus technical loss (no-load plus
copper loss, quadratic in load), plus measurement error (SCADA 0.5 %, meters 0.5 %). Labelled
cases, at most one per transformer, from ``start_ms`` on:

- ``theft``: a bypassed meter registers 30-90 % less than it consumes;
- ``drift``: a meter reads slowly lower, 2-6 % more every day;
- ``mismap``: the topology moves a meter to another transformer, but it stays where it was;
- ``loss_rise``: a transformer's copper loss grows to 3-5x over a week;
- ``remap``: a meter really moves to another transformer and the topology says so (clean: the
  balance must not alarm).

Pure numpy, seeded; the benchmark feeds ``interval(i)`` straight to ``models.balance`` and the
live demo encodes the same readings as JSON records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import orjson
from numpy.random import Generator, default_rng

from models.balance import BalanceCore, BalanceOutput
from schemas.topology import TopologyLink
from streams.sim.signal import load_shape

CASES = ("theft", "drift", "mismap", "loss_rise", "remap")


@dataclass(frozen=True, slots=True)
class BalanceSimConfig:
    transformers: int = 100
    meters_min: int = 8
    meters_max: int = 30
    days: int = 21
    seed: int = 0
    case_share: float = 0.5  # transformers with a labelled case (0: a clean run)
    cases: tuple[str, ...] = CASES
    start_day_min: float = 4.0  # cases start after the balance warmed up
    missing_rate: float = 0.002
    interval_s: int = 900
    scada_per_interval: int = 3


@dataclass(frozen=True, slots=True)
class Case:
    kind: str
    transformer: str
    meter: str
    start_ms: int
    magnitude: float
    other: str = ""  # the transformer a mis-mapped or moved meter is mapped to


@dataclass(slots=True)
class Interval:
    """One interval's readings (kW) and the topology records published before it."""

    meter_ids: np.ndarray
    meter_ts: np.ndarray
    meter_kw: np.ndarray
    tx_ids: np.ndarray
    tx_ts: np.ndarray
    tx_kw: np.ndarray
    topology: list[TopologyLink] = field(default_factory=list)


class BalanceSim:
    """Seeded grid of ``transformers`` with their meters, stepped one interval at a time."""

    def __init__(self, config: BalanceSimConfig, start_ms: int = 1_700_006_400_000) -> None:
        self.config = c = config
        self.start_ms = start_ms - start_ms % (c.interval_s * 1000)
        rng = default_rng(c.seed)
        sizes = rng.integers(c.meters_min, c.meters_max + 1, c.transformers)
        self.tx_ids = np.array([f"dtx-{t:05d}" for t in range(c.transformers)], dtype=object)
        self.meter_tx = np.repeat(np.arange(c.transformers), sizes)  # physical location
        n = self.meter_tx.shape[0]
        self.meter_ids = np.array([f"cm-{m:07d}" for m in range(n)], dtype=object)
        self.mapped_tx = self.meter_tx.copy()  # what the topology says
        com = rng.random(n) < 0.1
        self._mix = np.where(com, rng.uniform(0.75, 1.0, n), rng.uniform(0.0, 0.25, n))
        self._jitter = rng.normal(0.0, 0.7, n)
        self._scale = np.exp(np.where(com, rng.uniform(2.5, 4.0, n), rng.uniform(0.3, 1.6, n)))
        peak = np.bincount(self.meter_tx, self._scale, minlength=c.transformers)
        self._noload = 0.004 * peak * rng.uniform(0.5, 1.5, c.transformers)
        self._copper = 0.015 / peak * rng.uniform(0.5, 1.5, c.transformers)
        self._rng = rng
        self.cases = self._draw_cases(rng) if c.case_share > 0 else []
        self._pending = sorted(self.cases, key=lambda k: k.start_ms)

    def _draw_cases(self, rng: Generator) -> list[Case]:
        c = self.config
        chosen = np.flatnonzero(rng.random(c.transformers) < c.case_share)
        kinds = rng.integers(0, len(c.cases), chosen.shape[0])
        day = rng.uniform(c.start_day_min, max(c.start_day_min, c.days - 3.0), chosen.shape[0])
        cases = []
        for t, k, d in zip(chosen.tolist(), kinds.tolist(), day.tolist(), strict=True):
            kind = c.cases[k]
            meters = np.flatnonzero(self.meter_tx == t)
            m = int(rng.choice(meters))
            start = self.start_ms + int(d * 96) * c.interval_s * 1000
            mag = {
                "theft": rng.uniform(0.3, 0.9),
                "drift": rng.uniform(0.02, 0.06),
                "loss_rise": rng.uniform(3.0, 5.0),
            }.get(kind, 1.0)
            other = self.tx_ids[
                (t + 1 + int(rng.integers(0, max(1, c.transformers - 1)))) % c.transformers
            ]
            cases.append(
                Case(
                    kind,
                    str(self.tx_ids[t]),
                    str(self.meter_ids[m]),
                    start,
                    mag,
                    other if kind in ("mismap", "remap") else "",
                )
            )
        return cases

    def topology(self) -> list[TopologyLink]:
        """The initial topology: every transformer under a feeder, every meter under its
        transformer, valid from the start."""
        t0 = self.start_ms - 86_400_000
        links = [
            TopologyLink(
                child_id=str(tx),
                child_kind="transformer",
                parent_id=f"fd-{i // 10:03d}",
                parent_kind="feeder",
                valid_from=t0,
            )
            for i, tx in enumerate(self.tx_ids.tolist())
        ]
        links += [
            TopologyLink(
                child_id=f"fd-{j:03d}",
                child_kind="feeder",
                parent_id="sub-000",
                parent_kind="substation",
                valid_from=t0,
            )
            for j in range(-(-len(self.tx_ids) // 10))
        ]
        links += [
            TopologyLink(
                child_id=str(m),
                child_kind="meter",
                parent_id=str(self.tx_ids[t]),
                parent_kind="transformer",
                valid_from=t0,
            )
            for m, t in zip(self.meter_ids.tolist(), self.mapped_tx.tolist(), strict=True)
        ]
        return links

    def interval(self, i: int) -> Interval:
        """Readings of interval ``i`` (0 = the start) and the re-mappings effective from it."""
        c = self.config
        t = self.start_ms + i * c.interval_s * 1000
        links = self._start_cases(t)
        actual = self._consumption(t)
        registered = actual * (1.0 + 0.005 * self._rng.standard_normal(actual.shape[0]))
        for case in self.cases:
            if case.start_ms <= t:
                m = int(case.meter[3:])
                if case.kind == "theft":
                    registered[m] *= 1.0 - case.magnitude
                elif case.kind == "drift":
                    registered[m] *= max(0.2, 1.0 - case.magnitude * (t - case.start_ms) / 864e5)
        load = np.bincount(self.meter_tx, actual, minlength=c.transformers)
        copper = self._copper * np.array([self._loss_factor(k, t) for k in range(c.transformers)])
        flow = load + self._noload + copper * load**2
        keep = self._rng.random(actual.shape[0]) >= c.missing_rate
        sub = np.arange(c.scada_per_interval) * c.interval_s * 1000 // c.scada_per_interval
        tx_kw = flow[:, None] * (1 + 0.005 * self._rng.standard_normal((c.transformers, len(sub))))
        return Interval(
            meter_ids=self.meter_ids[keep],
            meter_ts=np.full(int(keep.sum()), t, dtype=np.int64),
            meter_kw=np.round(registered[keep], 3),
            tx_ids=np.repeat(self.tx_ids, len(sub)),
            tx_ts=(t + np.tile(sub, c.transformers)).astype(np.int64),
            tx_kw=np.round(tx_kw.ravel(), 3),
            topology=links,
        )

    def _loss_factor(self, k: int, t: int) -> float:
        for case in self.cases:
            rising = case.kind == "loss_rise" and case.transformer == self.tx_ids[k]
            if rising and t >= case.start_ms:
                return 1.0 + (case.magnitude - 1.0) * min(1.0, (t - case.start_ms) / (7 * 864e5))
        return 1.0

    def _start_cases(self, t: int) -> list[TopologyLink]:
        """Re-mappings that take effect at ``t``: the topology changes, physics maybe not."""
        links = []
        while self._pending and self._pending[0].start_ms <= t:
            case = self._pending.pop(0)
            if case.kind not in ("mismap", "remap"):
                continue
            m = int(case.meter[3:])
            other = int(case.other[4:])
            self.mapped_tx[m] = other
            if case.kind == "remap":
                self.meter_tx[m] = other
            links.append(
                TopologyLink(
                    child_id=case.meter,
                    child_kind="meter",
                    parent_id=case.other,
                    parent_kind="transformer",
                    valid_from=case.start_ms,
                )
            )
        return links

    def _consumption(self, t: int) -> np.ndarray:
        """True kW of every meter: daily shape, weekend, a little weather, lognormal noise."""
        hours = t / 3_600_000
        weekend = int(hours // 24 + 3) % 7 >= 5
        shape = load_shape((hours % 24.0 + self._jitter) % 24.0, weekend, self._mix)
        weather = 1.0 + 0.1 * math.sin(2 * math.pi * hours / (24 * 5.3))
        noise = np.exp(0.15 * self._rng.standard_normal(shape.shape[0]))
        return self._scale * shape * weather * noise


def feed(core: BalanceCore, iv: Interval, copies: int = 1) -> BalanceOutput:
    """Apply an interval's topology records, add its readings (``copies`` times: a redelivery)
    and close what the watermark passed; refused topology records raise (the sim makes none)."""
    refused = core.topology.apply(list(enumerate(iv.topology)))
    if refused:
        raise ValueError(f"simulated topology refused: {refused}")
    for _ in range(copies):
        core.add(
            iv.meter_ids,
            np.full(len(iv.meter_ids), "meter", dtype=object),
            iv.meter_ts,
            iv.meter_kw,
        )
        core.add(
            iv.tx_ids, np.full(len(iv.tx_ids), "transformer", dtype=object), iv.tx_ts, iv.tx_kw
        )
    return core.advance()


def encode(iv: Interval) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """(key, value) records of an interval: meter readings and transformer SCADA readings."""
    meters = [
        (m.encode(), orjson.dumps({"meter_id": m, "ts": t, "kw": kw}))
        for m, t, kw in zip(
            iv.meter_ids.tolist(), iv.meter_ts.tolist(), iv.meter_kw.tolist(), strict=True
        )
    ]
    scada = [
        (
            tx.encode(),
            orjson.dumps(
                {"asset_id": tx, "asset_kind": "transformer", "ts": t, "p_mw": round(kw / 1e3, 6)}
            ),
        )
        for tx, t, kw in zip(iv.tx_ids.tolist(), iv.tx_ts.tolist(), iv.tx_kw.tolist(), strict=True)
    ]
    return meters, scada


def encode_topology(links: list[TopologyLink]) -> list[tuple[bytes, bytes]]:
    """(key = child id, value) records for ``grid.topology``."""
    return [(lk.child_id.encode(), lk.model_dump_json(exclude_none=True).encode()) for lk in links]
