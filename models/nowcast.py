"""The baseline nowcast: the entity's time-of-day profile plus a decaying recent departure from it.

Expected value at time t for an entity last seen at t0:
    profile[bucket(t)] + deviation(t0) * decay ** ((t - t0) / interval)
falling back to the EWMA level while the profile has no observation for that bucket. It is
seasonal-naive blended with the recent level, the reference any learned model must beat, and it
costs a few array operations per batch.
"""

from __future__ import annotations

import numpy as np

from models.params import ProcessorParams

Z10 = 1.2815515655446004  # standard normal quantile of 0.9
MAD_TO_SIGMA = 1.2533141373155001  # E|X| * this = sigma for a normal X
MODEL_NAME = "baseline-seasonal-blend"
MODEL_VERSION = "1"


def bucket_of(ts_ms: np.ndarray, params: ProcessorParams) -> np.ndarray:
    return (ts_ms // 1000) % 86400 // params.profile_bucket_s


def week_bucket_of(ts_ms: np.ndarray) -> np.ndarray:
    """Hour of the week, Monday 00:00 UTC = 0 (1970-01-01 was a Thursday)."""
    return ((ts_ms // 3_600_000) + 3 * 24) % (7 * 24)


def steps_ahead(
    delta_ms: np.ndarray, interval_ms: np.ndarray, params: ProcessorParams
) -> np.ndarray:
    """How many sampling intervals ``delta_ms`` spans (the profile bucket while unknown)."""
    interval = np.where(
        np.isfinite(interval_ms) & (interval_ms > 0), interval_ms, params.profile_bucket_s * 1000.0
    )
    return np.clip(delta_ms / interval, 0.0, 1e3)


def expected_value(
    profile_at: np.ndarray,
    profile_seen: np.ndarray,
    deviation: np.ndarray,
    level: np.ndarray,
    steps: np.ndarray,
    params: ProcessorParams,
) -> np.ndarray:
    """p50 of the baseline ``steps`` intervals after the last reading (NaN with no history)."""
    ahead = profile_at.astype(np.float64) + deviation * params.deviation_decay**steps
    return np.where(profile_seen, ahead, level)


def interval_sigma(
    scale: np.ndarray, seasonal_scale: np.ndarray, steps: np.ndarray, params: ProcessorParams
) -> np.ndarray:
    """Forecast error sigma: the one-step residual scale near, the seasonal scale far ahead."""
    near = scale * MAD_TO_SIGMA
    far = np.where(np.isfinite(seasonal_scale), seasonal_scale * MAD_TO_SIGMA, near)
    weight = params.deviation_decay ** np.maximum(steps - 1.0, 0.0)
    return np.sqrt(weight * near**2 + (1.0 - weight) * np.maximum(far, near) ** 2)
