"""Day types: weekends have their own shape, learned as an offset from the weekday profile.

Load follows the calendar: a shop draws half its weekday load on a Sunday, a household gets up
later. A time-of-day profile that blends the two makes every weekend look like a level shift,
and a detector whose tails learn from weekends stops seeing real shifts on weekdays. So a reading
on one of ``weekend_days`` (Saturday and Sunday by default) is expected at the time-of-day
profile plus the *weekend offset* of its hour: the mean departure from the profile of that hour
over the weekend days seen, read from the weekly departures (``week_dev``, per hour of the
week, ``models.learning``). One weekend day teaches every weekend day of that hour, so the
second weekend is already known.

Only a weekend hour whose offset is large against both the entity's seasonal scale and the
spread of its weekdays gets its own shape: an entity with no weekly rhythm keeps one profile
for every day, and a warm weekend is not taken for the calendar. Days are UTC days, as the
time-of-day buckets are; docs/models.md has the rest (interpolation, re-basing, carrying).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from models.nowcast import bucket_of, week_bucket_of
from models.params import ProcessorParams
from models.state import NO_TS

WEEKEND_MIN_READINGS = 3  # readings behind an hour's offset before it is trusted
HOUR_MS = 3_600_000
CARRY_MS = 2 * HOUR_MS  # a weekend hour not seen yet takes the offset of a reading this recent


@lru_cache(maxsize=8)
def _weekend_table(days: tuple[int, ...]) -> np.ndarray:
    table = np.zeros(7, dtype=bool)
    table[list(days)] = True
    return table


def is_weekend(ts_ms: np.ndarray, params: ProcessorParams) -> np.ndarray:
    """Whether each time falls on one of ``weekend_days`` (a table lookup: on the hot path)."""
    if not params.weekend_days:
        return np.zeros(ts_ms.shape, dtype=bool)
    return _weekend_table(params.weekend_days)[(ts_ms // 86_400_000 + 3) % 7]  # 1970-01-01: Thu


def weekend_offset(
    c: dict[str, np.ndarray], s: np.ndarray, ts_ms: np.ndarray, params: ProcessorParams
) -> tuple[np.ndarray, np.ndarray]:
    """``(offset, seen)``: the mean weekly departure of each time's hour over the weekend days,
    and whether ``WEEKEND_MIN_READINGS`` weekend readings of that hour were seen.

    >>> c = {"week_dev": np.full((1, 168), np.nan, np.float32), "week_n": np.zeros((1, 168), "u2")}
    >>> c["week_dev"][0, 5 * 24 + 10], c["week_n"][0, 5 * 24 + 10] = -3.0, 4  # Saturday 10:00
    >>> c["week_dev"][0, 5 * 24 + 11], c["week_n"][0, 5 * 24 + 11] = -3.0, 1  # 11:00, once
    >>> sun = 1_704_621_600_000  # Sunday 2024-01-07 10:00 UTC
    >>> ts = np.array([sun, sun + 3_600_000])
    >>> off, seen = weekend_offset(c, np.zeros(2, int), ts, ProcessorParams())
    >>> off.tolist(), seen.tolist()
    ([-3.0, -3.0], [True, False])
    """
    cols = np.array(params.weekend_days) * 24 + (week_bucket_of(ts_ms) % 24)[:, None]
    dev = c["week_dev"][s[:, None], cols].astype(np.float64)
    n = c["week_n"][s[:, None], cols].astype(np.float64)
    seen = (n > 0) & np.isfinite(dev)
    n_seen = seen.sum(axis=1)
    mean = np.where(seen, dev, 0.0).sum(axis=1) / np.maximum(n_seen, 1)
    return mean, np.where(seen, n, 0.0).sum(axis=1) >= WEEKEND_MIN_READINGS


def weekday_spread(
    c: dict[str, np.ndarray], s: np.ndarray, ts_ms: np.ndarray, params: ProcessorParams
) -> np.ndarray:
    """How far the weekdays' own departures at each time's hour stray (root mean square over
    the weekdays seen; infinite before three): a weekend is its own day type only if it departs
    further than one weekday from another, so a warm weekend is not taken for the calendar."""
    weekdays = np.array([d for d in range(7) if d not in params.weekend_days])
    cols = weekdays * 24 + (week_bucket_of(ts_ms) % 24)[:, None]
    dev = c["week_dev"][s[:, None], cols].astype(np.float64)
    seen = (c["week_n"][s[:, None], cols] > 0) & np.isfinite(dev)
    n = seen.sum(axis=1)
    ms = np.where(seen, dev * dev, 0.0).sum(axis=1) / np.maximum(n, 1)
    return np.where(n >= 3, np.sqrt(ms), np.inf)


def _hour_offset(
    c: dict[str, np.ndarray], s: np.ndarray, ts_ms: np.ndarray, params: ProcessorParams
) -> tuple[np.ndarray, np.ndarray]:
    """``(offset, known)`` of the hour of each time: the learned weekend offset where the hour
    has its own shape, 0 on weekdays and weekend hours like weekdays; unknown if not seen yet.
    Only the weekend rows are gathered, and the weekdays' spread only where it can matter."""
    weekend = is_weekend(ts_ms, params)
    out, known = np.zeros(ts_ms.shape), np.ones(ts_ms.shape, dtype=bool)
    w = np.flatnonzero(weekend)
    if not w.size:
        return out, known
    off, off_seen = weekend_offset(c, s[w], ts_ms[w], params)
    known[w] = off_seen
    with np.errstate(invalid="ignore"):
        bar = params.weekend_min_shift * c["seasonal_scale"][s[w]]
        j = np.flatnonzero(off_seen & (np.abs(off) > bar))
        if j.size:
            spread = weekday_spread(c, s[w[j]], ts_ms[w[j]], params)
            own = np.abs(off[j]) > params.weekend_min_shift * spread
            out[w[j[own]]] = off[j[own]]
    return out, known


def profile_at(
    c: dict[str, np.ndarray], s: np.ndarray, ts_ms: np.ndarray, params: ProcessorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(time-of-day profile, bucket seen, day-type offset, offset known)`` of entities ``s``
    at ``ts_ms``.

    A weekend hour has its *own shape* once its offset departs from the weekday profile by
    ``weekend_min_shift`` times the larger of the seasonal scale and the weekdays' own spread;
    otherwise its offset is 0. Offsets are hourly and interpolated between the hours' middles,
    so a ramp (the later rise of a weekend morning) is followed, not met with a step. Only a
    weekend hour not seen yet has no known offset (``carried`` fills it in).
    """
    b = bucket_of(ts_ms, params)
    prof = c["profile"][s, b].astype(np.float64)
    seen = c["profile_n"][s, b] > 0
    if not (is_weekend(ts_ms - HOUR_MS, params) | is_weekend(ts_ms + HOUR_MS, params)).any():
        return prof, seen, np.zeros(prof.shape), np.ones(prof.shape, dtype=bool)
    off, known = _hour_offset(c, s, ts_ms, params)
    pos = (ts_ms % HOUR_MS) / HOUR_MS - 0.5  # -0.5 .. 0.5 across the hour
    near, _ = _hour_offset(c, s, ts_ms + np.where(pos >= 0, HOUR_MS, -HOUR_MS), params)
    return prof, seen, (1.0 - np.abs(pos)) * off + np.abs(pos) * near, known


def carried(
    c: dict[str, np.ndarray], s: np.ndarray, ts_ms: np.ndarray, params: ProcessorParams
) -> np.ndarray:
    """The offset of a weekend hour not seen yet: the last reading's, if it was on this weekend
    (the weekend's shape goes on as it was an hour ago), else 0."""
    last = c["last_ts"][s]
    recent = (last != NO_TS) & (ts_ms - last <= CARRY_MS) & (ts_ms >= last)
    return np.where(recent & is_weekend(np.where(recent, last, 0), params), c["day_off"][s], 0.0)


def offset_now(
    c: dict[str, np.ndarray], s: np.ndarray, ts_ms: np.ndarray, params: ProcessorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(time-of-day profile, bucket seen, offset)`` at ``ts_ms``: the learned offset where it
    is known, the carried one where not."""
    prof, seen, off, known = profile_at(c, s, ts_ms, params)
    if known.all():
        return prof, seen, off
    return prof, seen, np.where(known, off, carried(c, s, ts_ms, params))


def rebased_deviation(
    c: dict[str, np.ndarray], s: np.ndarray, seen: np.ndarray, params: ProcessorParams
) -> np.ndarray:
    """The last departure from the expected shape, against the shape as estimated *now*.

    The nowcast carries the last departure forward. It was measured against the shape of the
    last reading's time as then estimated (its offset is ``day_off``); if that weekend hour has
    since got its own offset, or a different one, the departure it explained is no longer one.
    A calendar boundary between the two readings changes nothing: the departure persists."""
    dev = c["deviation"][s]
    last = c["last_ts"][s]
    weekend = seen & is_weekend(np.where(seen, last, 0), params)
    if not weekend.any():
        return dev
    idx = np.flatnonzero(weekend)
    then = c["day_off"][s].copy()
    _, _, off, known = profile_at(c, s[idx], last[idx], params)
    then[idx] = np.where(known, off, then[idx])
    return dev + c["day_off"][s] - then
