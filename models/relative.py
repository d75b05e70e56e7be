"""Departures in relative (log) terms, for entities whose values are never negative.

Electric load has multiplicative noise: a meter's readings scatter by about the same *share* of
the load at 03:00 as at 19:00, so an absolute residual scale learned over the day is too wide at
night (a night-time step or a drop to zero hides in it) and too narrow at the peak. For an
entity whose range has stayed at or above 0, the departure from the profile (and, with
``ProcessorParams.relative`` set so, the one-step residual) is therefore measured as
``log((v + eps) / (ref + eps))``, with ``eps`` a fixed share
(``relative_eps``) of the top of the entity's range, so values near 0 stay finite and a
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

from models.detectors import robust_z


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


def relative_z(
    c: dict[str, np.ndarray],
    s: np.ndarray,
    v: np.ndarray,
    ref: np.ndarray,
    scale: np.ndarray,
    eps_share: float,
    on: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``(z, r)``: the relative departure ``r`` of ``v`` from ``ref`` (NaN where the entity is
    measured in absolute terms, or everywhere when ``on`` is false: nothing to compute or learn)
    and ``r`` over its robust ``scale`` (NaN until that scale exists)."""
    nan = np.full(v.shape, np.nan)
    if not on:
        return nan, nan
    ok, r = log_ratio(c, s, v, ref, eps_share)
    r = np.where(ok, r, np.nan)
    z = robust_z(np.nan_to_num(r), scale, np.ones_like(v))
    return np.where(ok & np.isfinite(scale), z, np.nan), r
