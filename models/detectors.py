"""Vectorised per-reading building blocks of the detectors: robust standardisation and CUSUM.

Their memory (scales, CUSUM sums) lives in ``EntityState`` and is updated after scoring (score
before learning). ``models.scoring`` turns them into statistics, ``models.tails`` into
probabilities.
"""

from __future__ import annotations

import numpy as np

from models.params import ONLINE_DETECTORS, ProcessorParams

DETECTORS = ONLINE_DETECTORS  # the online detectors, in the order events list them
# Channels whose departures from their own recent mean are scored. Current, reactive power and
# temperature follow the load, so the residual detector already sees their anomalies.
SCORED_CHANNELS: tuple[int, ...] = (1, 3)  # voltage, frequency (indices into CHANNEL_NAMES)


def robust_z(resid: np.ndarray, scale: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Residual over its EWMA absolute scale, floored so a constant series does not divide by 0."""
    floor = 1e-3 * np.maximum(np.abs(reference), 1e-3)
    denom = np.maximum(np.where(np.isfinite(scale), scale * 1.2533141373155001, floor), floor)
    z = resid / denom
    return np.where(np.isfinite(z), z, 0.0)


def cusum_update(
    pos: np.ndarray, neg: np.ndarray, z: np.ndarray, params: ProcessorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided CUSUM on standardised departures: ``(pos, neg, statistic before restart)``.

    The sums restart above ``3 * cusum_h`` so that a second change can show after a first."""
    pos = np.maximum(0.0, pos + z - params.cusum_k)
    neg = np.maximum(0.0, neg - z - params.cusum_k)
    stat = np.maximum(pos, neg)
    reset = stat > 3.0 * params.cusum_h
    return np.where(reset, 0.0, pos), np.where(reset, 0.0, neg), stat
