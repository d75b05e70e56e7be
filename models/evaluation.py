"""Scoring what the core produced against what happened: nowcast error and detection quality.

Pure bookkeeping shared by the demo, backtests and benchmarks. Forecast error is measured when
the actual reading at a forecast's target time arrives; detection is matched to labelled
anomaly windows per entity.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from schemas.batch import AnomalyRecord, ForecastBatch, ReadingBatch


@dataclass(slots=True)
class HorizonError:
    n: int = 0
    abs_err: float = 0.0
    abs_actual: float = 0.0
    ape_sum: float = 0.0
    ape_n: int = 0
    covered: int = 0

    @property
    def mae(self) -> float:
        return self.abs_err / self.n if self.n else float("nan")

    @property
    def mape(self) -> float:
        """Mean absolute percentage error over actuals away from zero, in percent."""
        return 100.0 * self.ape_sum / self.ape_n if self.ape_n else float("nan")

    @property
    def wape(self) -> float:
        """Sum of absolute errors over sum of absolute actuals, in percent (robust near zero)."""
        return 100.0 * self.abs_err / self.abs_actual if self.abs_actual else float("nan")

    @property
    def coverage(self) -> float:
        """Share of actuals inside the p10-p90 interval (80 % when calibrated)."""
        return self.covered / self.n if self.n else float("nan")


class ForecastTracker:
    """Remembers forecasts until their target reading arrives, then scores them.

    Memory is bounded by ``max_pending``: the oldest pending forecasts are dropped first (their
    targets never arrived: a missing reading or a stopped stream) and counted in ``expired``.
    """

    def __init__(self, max_pending: int = 2_000_000, min_abs_actual: float = 1e-3) -> None:
        self.pending: dict[tuple[str, str, int, int], tuple[float, float, float]] = {}
        self.by_horizon: dict[int, HorizonError] = defaultdict(HorizonError)
        self.max_pending = max_pending
        self.min_abs_actual = min_abs_actual
        self.expired = 0

    def add_forecasts(self, fc: ForecastBatch) -> None:
        keys = zip(
            fc.kind.tolist(),
            fc.entity.tolist(),
            fc.target_ms.tolist(),
            fc.horizon_s.tolist(),
            strict=True,
        )
        values = zip(fc.p10.tolist(), fc.p50.tolist(), fc.p90.tolist(), strict=True)
        self.pending.update(zip(keys, values, strict=True))
        overflow = len(self.pending) - self.max_pending
        if overflow > 0:
            for key in list(self.pending)[:overflow]:
                del self.pending[key]
            self.expired += overflow

    def add_actuals(self, batch: ReadingBatch, horizons: tuple[int, ...]) -> None:
        pop = self.pending.pop
        for kind, entity, ts, value in zip(
            batch.kind.tolist(),
            batch.entity.tolist(),
            batch.ts_ms.tolist(),
            batch.value.tolist(),
            strict=True,
        ):
            for h in horizons:
                hit = pop((kind, entity, ts, h), None)
                if hit is None:
                    continue
                p10, p50, p90 = hit
                err = self.by_horizon[h]
                err.n += 1
                err.abs_err += abs(value - p50)
                err.abs_actual += abs(value)
                if abs(value) >= self.min_abs_actual:
                    err.ape_sum += abs(value - p50) / abs(value)
                    err.ape_n += 1
                err.covered += p10 <= value <= p90


@dataclass(frozen=True, slots=True)
class Label:
    entity_id: str
    entity_kind: str
    kind: str
    start_ms: int
    end_ms: int


@dataclass(slots=True)
class DetectionReport:
    events: int = 0
    true_events: int = 0
    labels: int = 0
    detected: int = 0
    per_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (found, total)
    delays_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return self.true_events / self.events if self.events else float("nan")

    @property
    def recall(self) -> float:
        return self.detected / self.labels if self.labels else float("nan")


def match_detections(
    events: list[AnomalyRecord], labels: list[Label], grace_ms: int, scored_from_ms: int = 0
) -> DetectionReport:
    """Match events to labelled windows of the same entity, ``[start, end + grace]``.

    An event inside some window is a true positive; a window with an event is detected. Labels
    that start before ``scored_from_ms`` (while the detector was still warming up) are skipped,
    and so are events before it.
    """
    events = [ev for ev in events if ev.ts_ms >= scored_from_ms]
    windows: dict[tuple[str, str], list[Label]] = defaultdict(list)
    labels = [lab for lab in labels if lab.start_ms >= scored_from_ms]
    for lab in labels:
        windows[(lab.entity_kind, lab.entity_id)].append(lab)
    report = DetectionReport(events=len(events), labels=len(labels))
    first_hit: dict[Label, int] = {}
    for ev in events:
        hit = False
        for lab in windows.get((ev.entity_kind, ev.entity_id), ()):
            if lab.start_ms <= ev.ts_ms <= lab.end_ms + grace_ms:
                hit = True
                if lab not in first_hit or ev.ts_ms < first_hit[lab]:
                    first_hit[lab] = ev.ts_ms
        report.true_events += hit
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for lab in labels:
        totals[lab.kind][1] += 1
        if lab in first_hit:
            totals[lab.kind][0] += 1
            report.delays_s.setdefault(lab.kind, []).append((first_hit[lab] - lab.start_ms) / 1e3)
    report.detected = len(first_hit)
    report.per_kind = {k: (v[0], v[1]) for k, v in sorted(totals.items())}
    return report


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")
