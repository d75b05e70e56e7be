"""Forecasts of a round's readings: the baseline, optionally refined by a loaded ensemble.

Called per round right after the round's readings are learned, so a forecast never sees a later
reading. With a ``FeatureRecorder`` attached (training), the same features the ensemble would
see are recorded with the baseline, so a model is always trained on exactly what it will serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models.daytype import offset_now
from models.features import FEATURE_NAMES, forecast_features, reference_scale
from models.nowcast import (
    MODEL_NAME,
    MODEL_VERSION,
    Z10,
    expected_value,
    interval_sigma,
    steps_ahead,
)
from models.params import ProcessorParams

if TYPE_CHECKING:
    from models.ensemble import NowcastEnsemble

BASELINE_REF = f"{MODEL_NAME}@{MODEL_VERSION}"


class Recorder(Protocol):
    """Receives training material: forecasts with their features, and the actuals later."""

    def add_forecasts(
        self,
        slots: np.ndarray,
        horizon_s: int,
        target_ms: np.ndarray,
        x: np.ndarray,
        base_p50: np.ndarray,
        ref: np.ndarray,
    ) -> None: ...

    def add_detector_features(self, x: np.ndarray) -> None:
        """Feature vectors of warm readings, for the batch anomaly model."""

    def add_actuals(self, slots: np.ndarray, ts_ms: np.ndarray, value: np.ndarray) -> None: ...


@dataclass(frozen=True, slots=True)
class Part:
    """Forecast rows of one round, row-major (reading, horizon): baseline quantiles, plus the
    features the ensemble refines them with once per batch (``refine``)."""

    rows: np.ndarray
    horizon: np.ndarray
    target: np.ndarray
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    x: np.ndarray | None = None  # (rows * horizons, features) when an ensemble is loaded
    ref: np.ndarray | None = None


class Forecaster:
    """Baseline quantiles for every horizon; the ensemble's where it has a model for it."""

    def __init__(
        self,
        params: ProcessorParams,
        ensemble: NowcastEnsemble | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.params = params
        self.ensemble = ensemble
        self.recorder = recorder

    @property
    def model(self) -> str:
        return BASELINE_REF if self.ensemble is None else self.ensemble.ref

    def forecast(
        self,
        cols: dict[str, np.ndarray],
        rows: np.ndarray,
        s: np.ndarray,
        ts: np.ndarray,
        is_meter: np.ndarray,
    ) -> Part | None:
        p, c = self.params, cols
        ready = c["count"][s] >= p.forecast_min
        if not ready.any():
            return None
        rows, s, ts, is_meter = rows[ready], s[ready], ts[ready], is_meter[ready]
        k = len(p.horizons_s)
        horizon = np.empty((rows.size, k), dtype=np.int64)
        target = np.empty((rows.size, k), dtype=np.int64)
        q = np.empty((3, rows.size, k), dtype=np.float64)
        learned = self.ensemble is not None
        x_all = np.full((rows.size, k, len(FEATURE_NAMES)), np.nan) if learned else None
        ref_all = np.ones((rows.size, k)) if learned else None
        for i, h in enumerate(p.horizons_s):
            tgt = ts + h * 1000
            steps = steps_ahead(np.full(rows.size, h * 1000.0), c["interval_ms"][s], p)
            prof, seen, off = offset_now(c, s, tgt, p)
            p50 = expected_value(prof + off, seen, c["deviation"][s], c["level"][s], steps, p)
            sigma = interval_sigma(c["scale"][s], c["seasonal_scale"][s], steps, p)
            sigma = np.where(np.isfinite(sigma), sigma, 0.0)
            if learned or self.recorder is not None:
                ref = reference_scale(c["scale"][s], c["seasonal_scale"][s], c["level"][s])
                x = forecast_features(c, s, is_meter, tgt, steps, p50, ref, p)
                if self.recorder is not None:
                    self.recorder.add_forecasts(s, h, tgt, x, p50, ref)
                if x_all is not None and ref_all is not None:
                    x_all[:, i], ref_all[:, i] = x, ref
            horizon[:, i] = h
            target[:, i] = tgt
            q[0, :, i], q[1, :, i], q[2, :, i] = p50 - Z10 * sigma, p50, p50 + Z10 * sigma
        return Part(
            np.repeat(rows, k),
            horizon.ravel(),
            target.ravel(),
            q[0].ravel(),
            q[1].ravel(),
            q[2].ravel(),
            None if x_all is None else x_all.reshape(rows.size * k, -1),
            None if ref_all is None else ref_all.ravel(),
        )

    def refine(
        self,
        horizon: np.ndarray,
        target: np.ndarray,
        p10: np.ndarray,
        p50: np.ndarray,
        p90: np.ndarray,
        x: np.ndarray | None,
        ref: np.ndarray | None,
    ) -> None:
        """Replace baseline quantiles by the ensemble's, in place: one predict per horizon per
        batch, since a model call costs far more per call than per row."""
        if self.ensemble is None or x is None or ref is None:
            return
        for h in np.unique(horizon).tolist():
            if not self.ensemble.covers(h):
                continue
            m = horizon == h
            p10[m], p50[m], p90[m] = self.ensemble.predict(
                h, x[m], target[m], p50[m], p10[m], p90[m], ref[m]
            )
