"""Departures in relative (log) terms, for entities whose values are never negative.

Electric load has multiplicative noise: a meter's readings scatter by about the same *share* of
the load at 03:00 as at 19:00, so an absolute residual scale learned over the day is too wide at
night (a night-time step or a drop to zero hides in it) and too narrow at the peak. For an
entity whose range has stayed at or above 0, the residual and the departure from the profile are
therefore measured as ``log((v + eps) / (ref + eps))``, with ``eps`` a fixed share
(``log_eps``) of the top of the entity's range, so values near 0 stay finite and a
drop to zero is a large but bounded departure. Entities that go negative (export, reactive
power, temperatures below zero) keep absolute departures.

>>> import numpy as np
>>> c = {"nov_lo": np.array([0.0, -5.0]), "nov_hi": np.array([10.0, 10.0])}
>>> ok, r = log_ratio(c, np.array([0, 1]), np.array([0.0, 0.0]), np.array([5.0, 5.0]), 0.05)
>>> ok.tolist(), [round(float(x), 2) for x in r]
([True, False], [-2.4, 0.0])
"""

from __future__ import annotations

import numpy as np


def log_ratio(
    c: dict[str, np.ndarray], s: np.ndarray, v: np.ndarray, ref: np.ndarray, eps_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(relative, log((v + eps) / (ref + eps)))``: ``relative`` marks readings of entities
    measured in relative terms (a range at or above 0 and a non-negative reading); 0 elsewhere."""
    lo, hi = c["nov_lo"][s], c["nov_hi"][s]
    relative = np.isfinite(lo) & (lo >= 0.0) & (hi > 0.0) & (v >= 0.0) & np.isfinite(ref)
    eps = eps_share * np.where(relative, hi, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.log((np.maximum(v, 0.0) + eps) / (np.maximum(ref, 0.0) + eps))
    ok = relative & np.isfinite(r)
    return ok, np.where(ok, r, 0.0)
