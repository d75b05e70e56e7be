"""Novelty: how far a reading lies outside the range the entity has shown so far.

Many real incidents take a series somewhere it has never been: a machine's temperature far below
any earlier dip, a count above every earlier burst, a CPU at a level it never ran at. No model of
the signal is needed to see that, only its range. Per entity the range ``[lo, hi]`` is learned
online: a reading outside it pulls the bound out by ``nov_out_rate`` (2 %) of the overshoot, so a
descent over many hours to where the series has never been is measured against where the range
was before it (a fast-following bound would move with the descent and find every step ordinary),
and a lasting new level becomes part of the range within about a hundred readings (the incident's
echo is discounted meanwhile, ``models.fusion``). Both bounds creep towards the middle by
``nov_in_rate`` a reading, so an extreme of long ago fades. The statistic is the overshoot in
range widths, 0 inside the range; ``models.tails`` calibrates it against the entity's own record
of overshoots (its share of non-zero values included).

>>> import numpy as np
>>> from models.params import ProcessorParams
>>> c = {"nov_lo": np.array([0.0]), "nov_hi": np.array([10.0])}
>>> [float(x) for x in overshoot_and_learn(c, np.array([0]), np.array([15.0]), ProcessorParams())]
[0.5]
"""

from __future__ import annotations

import numpy as np

from models.params import ProcessorParams


def overshoot_and_learn(
    c: dict[str, np.ndarray], s: np.ndarray, v: np.ndarray, params: ProcessorParams
) -> np.ndarray:
    """Overshoot of ``v`` beyond the range in range widths (NaN while there is no range yet),
    then the range learned."""
    lo, hi = c["nov_lo"][s], c["nov_hi"][s]
    width = hi - lo
    floor = 1e-6 * np.maximum(np.abs(hi), np.abs(lo)) + 1e-12
    with np.errstate(invalid="ignore"):
        out = np.maximum(np.maximum(v - hi, lo - v), 0.0) / np.maximum(width, floor)
    out = np.where(np.isfinite(width) & np.isfinite(v), out, np.nan)
    first = ~np.isfinite(lo)
    r_out, r_in = params.nov_out_rate, params.nov_in_rate
    mid = 0.5 * (lo + hi)
    lo_new = np.where(v < lo, lo + r_out * (v - lo), lo + r_in * (mid - lo))
    hi_new = np.where(v > hi, hi + r_out * (v - hi), hi + r_in * (mid - hi))
    ok = np.isfinite(v)
    c["nov_lo"][s] = np.where(ok, np.where(first, v, lo_new), lo)
    c["nov_hi"][s] = np.where(ok, np.where(first, v, hi_new), hi)
    return out
