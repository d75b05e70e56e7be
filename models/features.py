"""Forecast features: scale-free columns computed from per-entity state at forecast time.

The same function serves live forecasting and training (training replays history through the
processor and records these columns), so train/serve skew cannot arise. Every feature is divided
by the entity's forecast scale or is a calendar/count feature, so one global model serves meters
in kW and feeders in MW, and an entity never seen in training.

Windows it draws on: the ring of recent readings (last ``window`` readings), the time-of-day
profile (same time on previous days, an EWMA over days), the EWMA level (longer baseline), and
the calendar of the target time.
"""

from __future__ import annotations

import numpy as np

from models.nowcast import MAD_TO_SIGMA
from models.params import ProcessorParams

FEATURE_NAMES: tuple[str, ...] = (
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "weekend",
    "steps_ahead",
    "last_vs_base",
    "departure_now",
    "profile_change",
    "level_vs_base",
    "recent_mean_vs_base",
    "recent_std",
    "recent_range",
    "last_step",
    "prev_step",
    "scale_ratio",
    "profile_seen_days",
    "log_count",
    "is_meter",
)
_DAY_S = 86_400
_WEEK_S = 7 * _DAY_S
_EPOCH_DOW = 3  # 1970-01-01 was a Thursday: day index 3 with Monday = 0


def reference_scale(scale: np.ndarray, seasonal_scale: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The unit every feature and learned target is expressed in: a sigma, never zero."""
    near = np.where(np.isfinite(scale), scale, np.nan) * MAD_TO_SIGMA
    far = np.where(np.isfinite(seasonal_scale), seasonal_scale, np.nan) * MAD_TO_SIGMA
    ref = np.fmax(near, far)
    floor = 1e-3 * np.maximum(np.abs(np.nan_to_num(level)), 1e-3)
    return np.where(np.isfinite(ref), np.maximum(ref, floor), floor)


def calendar(target_ms: np.ndarray) -> np.ndarray:
    """hour sin/cos, day-of-week sin/cos and a weekend flag of the target time (UTC)."""
    sec = target_ms // 1000
    day = 2 * np.pi * (sec % _DAY_S) / _DAY_S
    dow = ((sec // _DAY_S) + _EPOCH_DOW) % 7
    week = 2 * np.pi * dow / 7.0
    return np.column_stack(
        [np.sin(day), np.cos(day), np.sin(week), np.cos(week), (dow >= 5).astype(np.float64)]
    )


def forecast_features(
    cols: dict[str, np.ndarray],
    s: np.ndarray,
    kinds_meter: np.ndarray,
    target_ms: np.ndarray,
    steps: np.ndarray,
    base_p50: np.ndarray,
    ref: np.ndarray,
    params: ProcessorParams,
) -> np.ndarray:
    """An ``(n, len(FEATURE_NAMES))`` matrix for slots ``s`` forecasting ``target_ms``.

    ``cols`` is the entity state *after* the latest reading was learned; ``base_p50`` and
    ``ref`` are the baseline forecast and the reference scale at that target.
    """
    c = cols
    last = c["last_value"][s]
    ring = c["ring_value"][s]
    head = c["head"][s]
    w = params.window
    prev1 = ring[np.arange(s.size), (head - 2) % w]
    prev2 = ring[np.arange(s.size), (head - 3) % w]
    with np.errstate(invalid="ignore", all="ignore"):
        recent_mean = np.nanmean(ring, axis=1)
        recent_std = np.nanstd(ring, axis=1)
        recent_range = np.nanmax(ring, axis=1) - np.nanmin(ring, axis=1)
    bucket_now = (c["last_ts"][s] // 1000) % _DAY_S // params.profile_bucket_s
    bucket_target = (target_ms // 1000) % _DAY_S // params.profile_bucket_s
    prof_now = c["profile"][s, bucket_now].astype(np.float64)
    prof_target = c["profile"][s, bucket_target].astype(np.float64)
    seen_days = c["profile_n"][s, bucket_target].astype(np.float64)
    level = c["level"][s]
    x = np.column_stack(
        [
            calendar(target_ms),
            np.minimum(steps, 96.0),
            (last - base_p50) / ref,
            (last - prof_now) / ref,
            (prof_target - prof_now) / ref,
            (level - base_p50) / ref,
            (recent_mean - base_p50) / ref,
            recent_std / ref,
            recent_range / ref,
            (last - prev1) / ref,
            (prev1 - prev2) / ref,
            np.log1p(np.nan_to_num(c["scale"][s] / np.maximum(c["seasonal_scale"][s], 1e-12))),
            np.minimum(seen_days, 30.0),
            np.log1p(c["count"][s].astype(np.float64)),
            kinds_meter.astype(np.float64),
        ]
    )
    # Gradient boosting handles NaN natively; infinities and wild values are clipped.
    return np.clip(np.where(np.isinf(x), np.sign(x) * 1e3, x), -1e3, 1e3)
