"""Learning one round: every per-entity memory updated from the readings just scored.

Runs after scoring (prequential order). Scales are winsorised so an incident does not teach the
model that incidents are normal; see ``_robust_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.params import ProcessorParams
from models.state import NO_TS


@dataclass(frozen=True, slots=True)
class Observed:
    """What scoring a round computed, per reading of the round (slots ``s``)."""

    s: np.ndarray
    ts: np.ndarray
    v: np.ndarray
    seen: np.ndarray
    delta: np.ndarray
    bucket: np.ndarray
    prof: np.ndarray  # the time-of-day profile before this reading
    dev_d: np.ndarray  # departure from the day type's shape (profile plus offset)
    day_off: np.ndarray  # that shape's offset from the time-of-day profile
    deviation: np.ndarray  # the last departure from the shape, rebased on today's estimates
    own_day: np.ndarray  # a weekend hour with its own shape: not the weekday profile's to learn
    prof_seen: np.ndarray
    level: np.ndarray
    steps: np.ndarray
    resid: np.ndarray
    dev_s: np.ndarray
    run: np.ndarray
    same_value: np.ndarray
    chan_vals: np.ndarray
    cpos: np.ndarray
    cneg: np.ndarray
    tod_scale: np.ndarray  # the bucket's residual scale before this reading (resid_prof)
    wbucket: np.ndarray  # hour of the week
    week_dev: np.ndarray  # that hour's weekly departure before this reading (week_dev)
    lres: np.ndarray  # relative residual, NaN where the entity is measured in absolute terms
    ldev: np.ndarray  # relative departure from the profile, likewise


def learn(p: ProcessorParams, c: dict[str, np.ndarray], o: Observed) -> None:
    """Update the state columns ``c`` in place for the round's slots."""
    s, ts, v, seen, delta = o.s, o.ts, o.v, o.seen, o.delta
    bucket, prof, prof_seen, level, steps = o.bucket, o.prof, o.prof_seen, o.level, o.steps
    resid, dev_s, run, same_value = o.resid, o.dev_s, o.run, o.same_value
    chan_vals, cpos, cneg = o.chan_vals, o.cpos, o.cneg
    count = c["count"][s]
    scale = c["scale"][s]
    warm = count >= p.warmup
    c["scale"][s] = _robust_scale(scale, np.abs(resid), _warm_rate(count, p.scale_rate), warm)
    sscale = c["seasonal_scale"][s]
    s_n = c["seasonal_n"][s]
    c["seasonal_scale"][s] = np.where(
        prof_seen,
        _robust_scale(sscale, np.abs(o.dev_d), _warm_rate(s_n, p.scale_rate), s_n >= p.warmup),
        sscale,
    )
    c["seasonal_n"][s] = s_n + prof_seen
    _learn_relative(p, c, o, warm, s_n >= p.warmup)
    c["cusum_pos"][s], c["cusum_neg"][s] = cpos, cneg
    learn_v = np.where(
        prof_seen & np.isfinite(sscale), np.clip(v, prof - 4.0 * sscale, prof + 4.0 * sscale), v
    )
    n_b = c["profile_n"][s, bucket].astype(np.float64)
    rate = np.maximum(1.0 / (n_b + 1.0), p.profile_rate)
    shared = ~o.own_day  # a weekend hour with its own shape is the weekly departures' to learn
    new_prof = np.where(prof_seen, prof + rate * (learn_v - prof), v)
    c["profile"][s, bucket] = np.where(shared, new_prof, prof)
    c["profile_n"][s, bucket] = np.minimum(n_b + shared, 65535).astype(np.uint16)
    tod = o.tod_scale
    c["resid_prof"][s, bucket] = np.where(
        warm,
        _robust_scale(tod, np.abs(resid), rate, warm & (n_b >= p.seasonal_min_days)),
        tod,
    )
    # Weekly profile: departures from a trusted time-of-day profile, per hour of the week,
    # winsorised like the profile; one week carries ``weekly_rate`` of the bucket's weight.
    trusted = prof_seen & (n_b >= p.seasonal_min_days) & np.isfinite(dev_s)
    wb, wk = o.wbucket, o.week_dev
    w_n = c["week_n"][s, wb].astype(np.float64)
    step_ms = c["interval_ms"][s]
    per_hour = np.where(np.isfinite(step_ms) & (step_ms > 0), 3_600_000.0 / step_ms, 1.0)
    w_rate = np.maximum(1.0 / (w_n + 1.0), p.weekly_rate / np.maximum(per_hour, 1.0))
    bound = 4.0 * np.nan_to_num(sscale, nan=np.inf)
    learn_d = np.where(np.isfinite(wk), np.clip(dev_s, wk - bound, wk + bound), dev_s)
    c["week_dev"][s, wb] = np.where(
        trusted, np.where(np.isfinite(wk), wk + w_rate * (learn_d - wk), dev_s), wk
    )
    c["week_n"][s, wb] = np.where(trusted, np.minimum(w_n + 1, 65535), w_n).astype(np.uint16)
    c["week_start"][s] = np.where(trusted & (c["week_start"][s] == NO_TS), ts, c["week_start"][s])
    decayed = o.deviation * p.deviation_decay**steps
    c["deviation"][s] = np.where(
        prof_seen, decayed + p.deviation_rate * ((v - prof - o.day_off) - decayed), 0.0
    )
    c["day_off"][s] = o.day_off
    c["level"][s] = _ewma(level, v, 0.3)
    interval = c["interval_ms"][s]
    regular = seen & (delta > 0) & ~(np.isfinite(interval) & (delta > 10.0 * interval))
    c["interval_ms"][s] = np.where(regular, _ewma(interval, delta, 0.1), interval)
    c["run"][s] = run
    # Freeze the repeat rate during a long run of a warm entity (a stuck episode must not teach
    # it that repeats are normal), but not while warming up: an entity that repeats from its
    # first reading on is one that repeats, and must not raise a stuck alarm every cooldown.
    long_run = (run >= 3) & (count >= p.warmup)
    c["repeat_rate"][s] = np.where(
        long_run, c["repeat_rate"][s], _ewma(c["repeat_rate"][s], same_value * 1.0, 0.01)
    )
    has = np.isfinite(chan_vals)
    old_mean = c["chan_mean"][s]
    old_scale = c["chan_scale"][s]
    # Winsorise like the value scales: a sustained sag moves the mean by at most 4 scales a
    # reading times the rate, so it stays anomalous for hours instead of being learned.
    warm_chan = (count >= p.warmup)[:, None] & np.isfinite(old_scale)
    bound = 4.0 * old_scale + 1e-12
    learn_chan = np.where(
        warm_chan, np.clip(chan_vals, old_mean - bound, old_mean + bound), chan_vals
    )
    rate = _warm_rate(count, p.channel_rate)[:, None]
    c["chan_scale"][s] = np.where(
        has & np.isfinite(old_mean),
        _robust_scale(
            old_scale, np.abs(chan_vals - old_mean), rate, warm[:, None], clipped_rate=0.1
        ),
        old_scale,
    )
    c["chan_mean"][s] = np.where(has, _ewma(old_mean, learn_chan, rate), old_mean)
    pos = c["head"][s] % p.window
    c["ring_value"][s, pos] = v
    c["ring_ts"][s, pos] = ts
    c["head"][s] += 1
    c["last_ts"][s] = ts
    c["last_value"][s] = v
    c["count"][s] += 1


def _ewma(old: np.ndarray, new: np.ndarray, rate: float | np.ndarray) -> np.ndarray:
    """EWMA step that starts at the first observation; NaN observations leave it unchanged."""
    stepped = np.where(np.isfinite(old), old + rate * (new - old), new)
    return np.where(np.isfinite(new), stepped, old)


def _robust_scale(
    scale: np.ndarray,
    abs_dev: np.ndarray,
    rate: np.ndarray | float,
    warm: np.ndarray,
    clipped_rate: float = 1.0,
) -> np.ndarray:
    """EWMA of absolute deviations, winsorised at 4 scales once warm.

    ``clipped_rate`` scales the rate for clipped deviations. At 1.0 a sustained departure grows
    the scale by ~15 % a reading, so it is learned as normal within hours: right for power,
    whose variance really moves with weather and whose level shifts the seasonal CUSUM reports.
    Voltage and frequency use 0.1: a sag stays anomalous while it lasts, and a scale that started
    too small still grows, slowly. During warm-up every deviation is learned as it is.
    """
    bound = 4.0 * scale + 1e-12
    clipped = warm & np.isfinite(scale) & (abs_dev > bound)
    learned = np.where(clipped, bound, abs_dev)
    return _ewma(scale, learned, np.where(clipped, np.asarray(rate) * clipped_rate, rate))


def _warm_rate(n: np.ndarray, rate: float) -> np.ndarray:
    """Plain mean of the first observations, then the EWMA rate: no cold-start bias."""
    return np.maximum(1.0 / (n + 1.0), rate)


def _learn_relative(
    p: ProcessorParams, c: dict[str, np.ndarray], o: Observed, warm: np.ndarray, s_warm: np.ndarray
) -> None:
    """Scales of the relative residual and departure (``models.relative``), where measured."""
    s, count, s_n = o.s, c["count"][o.s], c["seasonal_n"][o.s]
    for col, x, rate, ok in (
        ("lscale", o.lres, _warm_rate(count, p.scale_rate), warm),
        ("lsscale", o.ldev, _warm_rate(s_n, p.scale_rate), s_warm),
    ):
        old = c[col][s]
        has = np.isfinite(x)
        learned = _robust_scale(old, np.abs(np.nan_to_num(x)), rate, ok)
        c[col][s] = np.where(has, learned, old)
