"""Scoring one round: features of every reading against the state before it, and the detectors.

Each detector yields a non-negative *statistic*; ``models.tails`` turns it into the ``log10``
probability of a statistic at least that large under the entity's own recent behaviour. The
statistics are:

- ``residual``: |one-step residual| of the nowcast over its robust scale (spikes, dips);
- ``seasonal``: a two-sided CUSUM of departures from the time-of-day profile (level changes and
  drift of loads with a daily rhythm);
- ``channel``: the largest |departure| of voltage or frequency from its own recent mean;
- ``likelihood``: the recent mean |error| against its long-run distribution (bursts of noise,
  changed rhythm; ``models.likelihood``);
- ``level``: the recent mean value (or departure from the profile) against its long-run
  distribution, at two time scales (level shifts, slow drift);
- ``novelty``: how far the reading lies outside the range the entity has shown
  (``models.novelty``);
- ``stuck``: identical consecutive readings, scored by their geometric probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import detectors as det
from models import tails
from models.daytype import offset_now, rebased_deviation
from models.learning import Observed
from models.likelihood import score_and_learn as likelihood_stats
from models.novelty import overshoot_and_learn
from models.nowcast import bucket_of, expected_value, steps_ahead, week_bucket_of
from models.online import GatedHalfSpaceTrees
from models.params import ProcessorParams
from models.relative import relative_z
from models.state import NO_TS
from schemas.batch import ReadingBatch

WEEK_MS = 7 * 86_400_000
_Z_LIKE = ("residual", "channel")  # standardised statistics: a prior tail while theirs is young
_STATS = ("residual", "seasonal", "channel", "likelihood", "level", "novelty")
# score_round calibrates these in one call: their tails must be the first slots, in this order
assert [tails.TAIL_SLOTS[n] for n in _STATS] == list(range(len(_STATS)))
_PRIOR = np.array([n in _Z_LIKE for n in _STATS])
CHANNELS = ("reactive", "voltage", "current", "frequency", "temperature")


@dataclass(slots=True)
class Scored:
    """A round's readings after scoring: log10 tail probabilities and explanation features."""

    logp: dict[str, np.ndarray]  # detector -> log10 P(statistic at least this large)
    feats: dict[str, np.ndarray]
    observed: Observed
    warm: np.ndarray
    hst_x: np.ndarray
    gate: np.ndarray  # readings some fast detector finds suspicious (for HST / batch model)


def score_round(
    p: ProcessorParams,
    c: dict[str, np.ndarray],
    batch: ReadingBatch,
    rows: np.ndarray,
    s: np.ndarray,
    seen: np.ndarray,
) -> Scored:
    """Features and detector probabilities of a round's readings, before they are learned.

    Learns the detector memories that live only here (tail models, likelihood statistics);
    ``models.learning.learn`` learns the rest from ``Scored.observed``.
    """
    ts, v = batch.ts_ms[rows], batch.value[rows]
    o = _features(p, c, batch, rows, s, ts, v, seen)
    f = o.feats
    warm = c["count"][s] >= p.warmup
    cpos, cneg, cusum = det.cusum_update(c["cusum_pos"][s], c["cusum_neg"][s], f["zs"], p)
    tail_x, tail_z = likelihood_stats(c, s, v, o.resid, o.dev_w, o.prof_trusted, o.weekly, p)
    zc = np.abs(f["zc"][:, det.SCORED_CHANNELS]).max(axis=1)
    stats = {
        "residual": np.abs(f["z"]),
        "seasonal": np.where(o.prof_trusted, cusum, np.nan),
        "channel": np.where(np.isfinite(f["chan_any"]), zc, np.nan),
        **tail_x,
        "novelty": overshoot_and_learn(c, s, v, p),
    }
    # one call for every calibrated statistic: their tails are slots 0..k-1 in TAIL_SLOTS order
    names = _STATS
    x = np.column_stack([stats[n] for n in names])
    x = np.where(warm[:, None], x, np.nan)  # a cold entity's statistics are noise: not learned
    prior = _PRIOR
    lp = tails.score_and_learn(c, s, slice(0, len(names)), x, p, prior)
    logp = {n: lp[:, j] for j, n in enumerate(names)}
    logp["stuck"] = np.where(warm, tails.stuck_log10p(o.run, c["repeat_rate"][s], p), 0.0)
    strongest = np.minimum.reduce(list(logp.values()))
    observed = Observed(
        s=s,
        ts=ts,
        v=v,
        seen=seen,
        delta=o.delta,
        bucket=o.bucket,
        prof=o.tod_prof,
        dev_d=o.dev_d,
        day_off=o.day_off,
        deviation=o.deviation,
        own_day=o.own_day,
        prof_seen=f["prof_seen"],
        level=o.level,
        steps=o.steps,
        resid=o.resid,
        dev_s=o.dev_s,
        run=o.run,
        same_value=o.same_value,
        chan_vals=o.chan_vals,
        cpos=cpos,
        cneg=cneg,
        tod_scale=o.tod_scale,
        wbucket=o.wbucket,
        week_dev=o.week_dev,
        lres=o.lres,
        ldev=o.ldev,
    )
    feats = {**f, "run": o.run, "cusum": cusum, **tail_z}
    hst_x = GatedHalfSpaceTrees.features(f["z"], f["zs"], cusum, zc, o.run)
    return Scored(logp, feats, observed, warm, hst_x, strongest < -p.gate_decades)


@dataclass(slots=True)
class _Features:
    feats: dict[str, np.ndarray]
    delta: np.ndarray
    bucket: np.ndarray
    level: np.ndarray
    steps: np.ndarray
    resid: np.ndarray
    dev_s: np.ndarray
    dev_w: np.ndarray
    run: np.ndarray
    same_value: np.ndarray
    chan_vals: np.ndarray
    tod_scale: np.ndarray
    wbucket: np.ndarray
    week_dev: np.ndarray
    prof_trusted: np.ndarray
    weekly: np.ndarray
    lres: np.ndarray  # relative residual (NaN for entities measured in absolute terms)
    ldev: np.ndarray  # relative departure from the profile (likewise)
    tod_prof: np.ndarray  # the time-of-day profile alone (what the profile learns from)
    day_off: np.ndarray  # the day type's offset from it at this reading
    deviation: np.ndarray  # the last departure, against today's estimate of its shape
    dev_d: np.ndarray  # departure from the day type's profile
    own_day: np.ndarray  # a weekend hour with its own shape (models.daytype)


def _features(
    p: ProcessorParams,
    c: dict[str, np.ndarray],
    batch: ReadingBatch,
    rows: np.ndarray,
    s: np.ndarray,
    ts: np.ndarray,
    v: np.ndarray,
    seen: np.ndarray,
) -> _Features:
    """Expected value, residuals and standardised departures against the state before."""
    bucket = bucket_of(ts, p)
    tod_prof, prof_seen, day_off = offset_now(c, s, ts, p)
    own_day = day_off != 0.0  # a weekend hour with its own shape: not the profile's to learn
    prof = tod_prof + day_off  # this day type's expected shape
    prof_trusted = c["profile_n"][s, bucket] >= p.seasonal_min_days
    level = c["level"][s]
    delta = np.where(seen, ts - c["last_ts"][s], 0).astype(np.float64)
    steps = steps_ahead(delta, c["interval_ms"][s], p)
    deviation = rebased_deviation(c, s, seen, p)
    expected = expected_value(prof, prof_seen, deviation, level, steps, p)
    resid = v - expected
    dev_s = np.where(prof_seen, v - tod_prof, 0.0)  # what the weekly departures learn
    dev_d = np.where(prof_seen, v - prof, 0.0)  # the departure from this day type's shape
    # Noise grows with the load (ramps and peaks): this bucket's residual scale against the
    # entity's long-run one. It widens the seasonal scale, so a ramp is not a level shift, and
    # scales the one-step residual both ways: a quiet night is judged by its own quiet.
    tod_scale = c["resid_prof"][s, bucket].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tod_ratio = tod_scale / c["err_scale"][s]
    tod_ratio = np.where(prof_trusted & np.isfinite(tod_ratio), tod_ratio, 1.0)
    resid_ratio = np.clip(tod_ratio, 0.5, 4.0) if p.tod_residual else 1.0
    z = det.robust_z(resid, c["scale"][s] * resid_ratio, level)
    zs = det.robust_z(dev_d, c["seasonal_scale"][s] * np.maximum(tod_ratio, 1.0), level)
    # entities that never go negative: residual and departure in relative (log) terms
    eps, mode = p.relative_eps, p.relative
    zr, lres = relative_z(c, s, v, expected, c["lscale"][s], eps, mode in ("residual", "both"))
    ref = np.where(prof_seen, prof, np.nan)
    zd, ldev = relative_z(c, s, v, ref, c["lsscale"][s], eps, mode in ("departure", "both"))
    z = np.where(np.isfinite(zr), zr, z)
    zs = np.where(np.isfinite(zd), zd, zs)
    zs = np.where(prof_trusted & (c["seasonal_n"][s] >= p.warmup), zs, 0.0)
    same_value = seen & (v == c["last_value"][s])
    run = np.where(same_value, c["run"][s] + 1, 0)
    chan_vals = np.column_stack([getattr(batch, name)[rows] for name in CHANNELS])
    zc = det.robust_z(chan_vals - c["chan_mean"][s], c["chan_scale"][s], c["chan_mean"][s])
    zc = np.where(np.isfinite(chan_vals), zc, 0.0)
    chan_any = np.where(np.isfinite(chan_vals[:, det.SCORED_CHANNELS]).any(axis=1), 1.0, np.nan)
    wbucket = week_bucket_of(ts)
    week_dev = c["week_dev"][s, wbucket].astype(np.float64)
    week_start = c["week_start"][s]
    weekly = (
        prof_trusted
        & (week_start != NO_TS)
        & (ts - np.where(week_start == NO_TS, ts, week_start) >= p.weekly_min_weeks * WEEK_MS)
    )
    dev_w = dev_s - np.where(weekly & np.isfinite(week_dev), week_dev, 0.0)
    feats = {
        "z": z,
        "zs": zs,
        "zc": zc,
        "chan_any": chan_any,
        "expected": expected,
        "prof": prof,
        "prof_seen": prof_seen,
        "chan_mean": c["chan_mean"][s],  # a copy: the state before learning
    }
    return _Features(
        feats,
        delta,
        bucket,
        level,
        steps,
        resid,
        dev_s,
        dev_w,
        run,
        same_value,
        chan_vals,
        tod_scale,
        wbucket,
        week_dev,
        prof_trusted,
        weekly,
        lres,
        ldev,
        tod_prof,
        day_off,
        deviation,
        dev_d,
        own_day,
    )
