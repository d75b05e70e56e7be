"""Vectorised per-reading detectors: each maps a feature column to a score in [0, 1].

They are online: their memory (scales, CUSUM sums, run lengths) lives in ``EntityState`` and is
updated by the processor after scoring (score before learning).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from models.params import ProcessorParams

DETECTORS: tuple[str, ...] = (
    "residual",
    "seasonal",
    "stuck",
    "channel",
    "hst",
    "likelihood",
    "level",
)
# Channels whose departures from their own recent mean are scored. Current, reactive power and
# temperature follow the load, so the residual detector already sees their anomalies.
SCORED_CHANNELS: tuple[int, ...] = (1, 3)  # voltage, frequency (indices into CHANNEL_NAMES)


def logistic(x: np.ndarray, mid: float, width: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-(x - mid) / width))


def robust_z(resid: np.ndarray, scale: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Residual over its EWMA absolute scale, floored so a constant series does not divide by 0."""
    floor = 1e-3 * np.maximum(np.abs(reference), 1e-3)
    denom = np.maximum(np.where(np.isfinite(scale), scale * 1.2533141373155001, floor), floor)
    z = resid / denom
    return np.where(np.isfinite(z), z, 0.0)


def z_score(z: np.ndarray, params: ProcessorParams) -> np.ndarray:
    return logistic(np.abs(z), params.z_mid, params.z_width)


def cusum_update(
    pos: np.ndarray, neg: np.ndarray, z: np.ndarray, params: ProcessorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided CUSUM on standardised departures; restarts after an alarm so it can fire again."""
    pos = np.maximum(0.0, pos + z - params.cusum_k)
    neg = np.maximum(0.0, neg - z - params.cusum_k)
    stat = np.maximum(pos, neg)
    score = logistic(stat, params.cusum_h, params.cusum_h / 5.0)
    reset = stat > 3.0 * params.cusum_h
    return np.where(reset, 0.0, pos), np.where(reset, 0.0, neg), score


def stuck_score(run: np.ndarray, repeat_rate: np.ndarray, params: ProcessorParams) -> np.ndarray:
    """Identical consecutive readings from an entity whose readings normally vary."""
    varies = repeat_rate <= params.stuck_max_repeat_rate
    return np.where(varies, logistic(run.astype(np.float64), params.stuck_mid, 1.0), 0.0)


def fuse(scores: dict[str, np.ndarray], params: ProcessorParams) -> np.ndarray:
    """Weighted noisy-OR: any one strong detector can raise the score, agreement raises it more."""
    keep = None
    for name, weight in params.weights:
        s = scores.get(name)
        if s is None:
            continue
        term = 1.0 - weight * np.clip(s, 0.0, 1.0)
        keep = term if keep is None else keep * term
    if keep is None:
        raise ValueError("no detector scores to fuse")
    return np.clip(1.0 - keep, 0.0, 1.0)


def calibrate(
    raw: np.ndarray,
    cols: dict[str, np.ndarray],
    s: np.ndarray,
    warm: np.ndarray,
    params: ProcessorParams,
) -> np.ndarray:
    """Discount a fused score by how ordinary it is for this entity, then learn it.

    ``raw * P(a score below raw)`` under a normal fit of the entity's own recent fused scores:
    on a quiet entity any high score is rare and keeps its value (and severity); on one whose
    readings routinely score high (spiky by nature) the same score is discounted, so one
    threshold means the same across entities. Until ``calibration_min`` warm readings, the raw
    score stands. Updates the entity's running mean and variance (prequential: after use).
    """
    mean, var, n = cols["score_mean"][s], cols["score_var"][s], cols["score_n"][s]
    sd = np.sqrt(np.maximum(np.nan_to_num(var), params.calibration_floor**2))
    ready = n >= params.calibration_min
    with np.errstate(invalid="ignore"):
        cal = raw * ndtr((raw - np.nan_to_num(mean)) / sd)
    out = np.where(ready, cal, raw)
    rate = np.maximum(1.0 / (n + 1.0), params.calibration_rate)
    first = ~np.isfinite(mean)
    d = raw - np.where(first, raw, mean)
    new_mean = np.where(first, raw, mean + rate * d)
    new_var = np.where(first, 0.0, (1.0 - rate) * (np.nan_to_num(var) + rate * d * d))
    cols["score_mean"][s] = np.where(warm, new_mean, mean)
    cols["score_var"][s] = np.where(warm, new_var, var)
    cols["score_n"][s] = n + warm
    return out


def severity_rank(score: np.ndarray, params: ProcessorParams) -> np.ndarray:
    """-1 below the lowest threshold, else the index in (info, warning, critical)."""
    thresholds = dict(params.severity_thresholds)
    rank = np.full(score.shape, -1, dtype=np.int64)
    for i, name in enumerate(("info", "warning", "critical")):
        rank = np.where(score >= thresholds[name], i, rank)
    return rank
