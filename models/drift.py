"""Drift of the forecast residuals, per entity kind, with river's ADWIN.

The one-step residual z-scores of warm readings (all of them, or a deterministic 1-in-N sample by
hash of entity and time for large fleets; fed in input order) go into one ADWIN per entity kind.
The residual scales adapt within tens of readings, so the detector needs a dense sample to see a
change before it is absorbed: at one in every reading it found a fleet-wide tripling of noise
within two hours on four meters. When ADWIN finds
that the recent mean |z| differs from the older window, the fleet's readings no longer behave as
the models expect (new load pattern, meter firmware, a changed feeder topology, a stale model
set): a drift event is emitted. Per-entity level shifts are the seasonal detector's job; this is
the fleet-level signal that says "retrain or look at the models".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river import drift

from models.online import hash_sample
from schemas.batch import DriftEventRecord

DETECTOR = "adwin_residual"
FLEET = "*"  # entity_id of a fleet-level event


class ResidualDrift:
    """One ADWIN per entity kind over sampled |z|; ``update`` returns the drift events."""

    def __init__(
        self, delta: float = 0.002, sample_every: int = 1, min_change: float = 0.25
    ) -> None:
        self.delta = delta
        self.min_change = min_change
        self.sample_every = sample_every
        self.detectors: dict[str, drift.ADWIN] = {}
        self.fed: dict[str, int] = {}

    def update(
        self, keys: Sequence[str], kinds: np.ndarray, ts_ms: np.ndarray, z: np.ndarray, now_ms: int
    ) -> list[DriftEventRecord]:
        """``z`` per input row (NaN where not scored); rows are taken in the order given."""
        use = np.isfinite(z) & hash_sample(keys, ts_ms, self.sample_every)
        events: list[DriftEventRecord] = []
        for j in np.flatnonzero(use):
            kind = str(kinds[j])
            det = self.detectors.get(kind)
            if det is None:
                det = self.detectors[kind] = drift.ADWIN(delta=self.delta)
            before = det.estimation
            det.update(abs(float(z[j])))
            self.fed[kind] = self.fed.get(kind, 0) + 1
            # ADWIN on tens of thousands of samples finds changes too small to matter (the daily
            # rhythm of |z|); only a shift of at least ``min_change`` of the old mean is drift.
            if det.drift_detected and abs(det.estimation - before) >= self.min_change * before:
                events.append(
                    DriftEventRecord(
                        entity_id=FLEET,
                        entity_kind=kind,
                        ts_ms=int(ts_ms[j]),
                        detector=DETECTOR,
                        statistic=round(float(det.estimation), 4),
                        detail={
                            "scope": "fleet",
                            "mean_abs_z_before": round(float(before), 4),
                            "mean_abs_z_after": round(float(det.estimation), 4),
                            "window": int(det.width),
                            "sampled": self.fed[kind],
                        },
                        detected_ms=now_ms,
                    )
                )
        return events
