"""The weekly profile and the time-of-day noise scale (per-entity state columns).

Behaviour, not figures: a weekday rhythm is learned per hour of the week and, once the entity has
``weekly_min_weeks`` weeks of departures, the level detector follows departures from it (weekends
stop looking like level shifts, a weekday that behaves like a weekend does not); noise that grows
with the load at fixed times of day widens the seasonal scale there; all of it is independent of
batch cuts and carried by snapshots.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from models.nowcast import week_bucket_of
from models.params import ProcessorParams
from models.processor import GridProcessor
from tests.unit.builders import NOW_MS, daily_load, split, to_batch

DAY = 96  # readings per day at 15 minutes
P = ProcessorParams()


def _weekly_load(weeks: int, seed: int = 3) -> dict[str, np.ndarray]:
    """One meter whose weekend load is 35 % below its weekday load."""
    cols = daily_load((("w", "meter"),), days=7 * weeks, seed=seed)
    dow = week_bucket_of(cols["ts_ms"]) // 24
    cols["value"] = np.where(dow >= 5, 0.65, 1.0) * cols["value"]
    return cols


def test_week_bucket_is_the_hour_of_the_week_from_monday() -> None:
    monday = 1_709_510_400_000  # 2024-03-04 00:00 UTC, a Monday
    hours = monday + 3_600_000 * np.array([0, 1, 24, 5 * 24 + 13, 7 * 24 - 1, 7 * 24])
    np.testing.assert_array_equal(week_bucket_of(hours), [0, 1, 24, 133, 167, 0])


def test_the_weekly_profile_learns_weekday_rhythm_and_the_level_detector_uses_it() -> None:
    cols = _weekly_load(weeks=5)
    proc = GridProcessor(P)
    res = proc.process_batch(to_batch(cols), NOW_MS)
    c = proc.state.cols
    assert c["lvl_dev"][0] == 2  # following departures from the weekly profile
    week = c["week_dev"][0].astype(np.float64)
    assert np.all(c["week_n"][0] > 0)
    # weekends sit below the time-of-day profile, weekdays above it
    assert week[5 * 24 :].mean() < 0.0 < week[: 5 * 24].mean()
    assert week[5 * 24 :].mean() < -0.3  # about 35 % of a 2 kW mean, less what the profile took
    # with the weekly profile, the level detector does not call the last weekends level shifts
    dow = week_bucket_of(cols["ts_ms"]) // 24
    late_weekend = (np.arange(len(cols["ts_ms"])) >= 4 * 7 * DAY) & (dow >= 5)
    assert np.mean(res.severity[late_weekend] >= 0) < 0.02


def test_a_weekday_that_looks_like_a_weekend_is_flagged_with_the_weekly_profile() -> None:
    cols = _weekly_load(weeks=5, seed=9)
    holiday = np.arange(4 * 7 * DAY + 2 * DAY, 4 * 7 * DAY + 3 * DAY)  # Wednesday of week 5
    cols["value"][holiday] *= 0.65
    weekly = GridProcessor(P).process_batch(to_batch(cols), NOW_MS)
    plain = GridProcessor(replace(P, weekly_min_weeks=1000)).process_batch(to_batch(cols), NOW_MS)
    assert weekly.severity[holiday].max() >= 0  # an event-worthy score on the holiday
    hits_weekly = [e for e in weekly.anomalies if holiday_ts(cols, holiday, e.ts_ms)]
    assert hits_weekly and any("level" in e.fired for e in hits_weekly)
    # the plain daily profile has seen departures like it every weekend: it scores it lower
    assert np.nanmax(weekly.score[holiday]) >= np.nanmax(plain.score[holiday])


def holiday_ts(cols: dict[str, np.ndarray], rows: np.ndarray, ts_ms: int) -> bool:
    return int(cols["ts_ms"][rows[0]]) <= ts_ms <= int(cols["ts_ms"][rows[-1]])


def test_noise_that_grows_with_the_load_widens_the_seasonal_scale_at_peak_hours() -> None:
    cols = daily_load((("n", "meter"),), days=8, noise=0.0, seed=4)
    rng = np.random.default_rng(4)
    base = cols["value"].copy()
    cols["value"] = base * np.exp(0.12 * (base / base.mean()) ** 3 * rng.standard_normal(base.size))
    proc = GridProcessor(P)
    res = proc.process_batch(to_batch(cols), NOW_MS)
    c = proc.state.cols
    prof = c["resid_prof"][0].astype(np.float64)
    assert np.all(np.isfinite(prof))
    peak, trough = int(np.argmax(c["profile"][0])), int(np.argmin(c["profile"][0]))
    assert prof[peak] > 3.0 * prof[trough]  # the peak's one-step noise is learned as wider
    # the seasonal CUSUM does not take the wide peaks for level shifts, day after day
    assert len([e for e in res.anomalies if "seasonal" in e.fired]) <= 1


def test_weekly_state_is_independent_of_batch_cuts_and_restored_by_snapshots() -> None:
    params = replace(P, weekly_min_weeks=1, lik_min=40, lvl_min=40, seasonal_min_days=1)
    cols = daily_load((("a", "meter"), ("f", "feeder")), days=10, step_ms=3_600_000, seed=2)
    dow = week_bucket_of(cols["ts_ms"]) // 24
    cols["value"] = np.where(dow >= 5, 0.7, 1.0) * cols["value"]
    cols["value"][2 * 24 * 8 + 5] *= 2.5
    whole = to_batch(cols)
    one = GridProcessor(params)
    r_one = one.process_batch(whole, NOW_MS)
    cuts = sorted(np.random.default_rng(5).choice(np.arange(1, len(whole)), 25, replace=False))
    pieces = split(whole, [int(x) for x in cuts])
    many = GridProcessor(params)
    half = len(pieces) // 2
    scores = [many.process_batch(b, NOW_MS).score for b in pieces[:half]]
    many = GridProcessor.from_snapshot(many.snapshot())  # a restart in the middle
    scores += [many.process_batch(b, NOW_MS).score for b in pieces[half:]]
    np.testing.assert_array_equal(r_one.score, np.concatenate(scores))
    a = one.state.snapshot()["cols"]
    b = many.state.snapshot()["cols"]
    assert (a["lvl_dev"] == 2).all()  # the weekly mode was reached in this run
    for name in ("week_dev", "week_n", "week_start", "resid_prof", "lvl_dev"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _shop(weeks: int, seed: int = 11) -> dict[str, np.ndarray]:
    """One meter that draws 40 % of its weekday load from 08:00 to 18:00 on weekends."""
    cols = daily_load((("shop", "meter"),), days=7 * weeks, seed=seed)
    dow = week_bucket_of(cols["ts_ms"]) // 24
    hour = week_bucket_of(cols["ts_ms"]) % 24
    cols["value"] = np.where((dow >= 5) & (hour >= 8) & (hour < 18), 0.4, 1.0) * cols["value"]
    return cols


def test_a_weekend_with_its_own_shape_is_expected_from_the_second_weekend_on() -> None:
    cols = _shop(weeks=3)
    with_types = GridProcessor(P).process_batch(to_batch(cols), NOW_MS)
    one_profile = GridProcessor(replace(P, weekend_days=())).process_batch(to_batch(cols), NOW_MS)
    dow = week_bucket_of(cols["ts_ms"]) // 24
    hour = week_bucket_of(cols["ts_ms"]) % 24
    later = (np.arange(len(cols["ts_ms"])) >= 7 * DAY) & (dow >= 5) & (hour >= 9) & (hour < 17)
    # the weekend's own shape is the expected value: the nowcast is close, the departure small
    err_types = np.abs(with_types.expected[later] / cols["value"][later] - 1.0)
    err_one = np.abs(one_profile.expected[later] / cols["value"][later] - 1.0)
    assert np.median(err_types) < 0.6 * np.median(err_one)
    # and the weekdays' profile did not learn the weekends: Monday's midday is no surprise
    monday = (np.arange(len(cols["ts_ms"])) >= 14 * DAY) & (dow == 0) & (hour >= 9) & (hour < 17)
    assert np.median(np.abs(with_types.expected[monday] / cols["value"][monday] - 1.0)) < 0.1
    assert len(with_types.anomalies) <= len(one_profile.anomalies)


def test_an_entity_without_a_weekly_rhythm_keeps_one_profile_for_every_day() -> None:
    cols = daily_load((("flat", "meter"),), days=21, seed=12)
    with_types = GridProcessor(P).process_batch(to_batch(cols), NOW_MS)
    one_profile = GridProcessor(replace(P, weekend_days=())).process_batch(to_batch(cols), NOW_MS)
    np.testing.assert_array_equal(with_types.score, one_profile.score)


def test_the_residual_scale_follows_the_time_of_day_so_a_quiet_night_is_judged_by_its_quiet() -> (
    None
):
    cols = daily_load((("n", "meter"),), days=10, noise=0.0, seed=6)
    rng = np.random.default_rng(6)
    base = cols["value"].copy()
    cols["value"] = base * np.exp(0.1 * (base / base.mean()) ** 3 * rng.standard_normal(base.size))
    night = 9 * DAY + int(np.argmin(base[:DAY]))  # the quietest time of the last day
    cols["value"][night] = base[night] * 3.0  # a reading of the evening at night
    tod = GridProcessor(P).process_batch(to_batch(cols), NOW_MS)
    flat = GridProcessor(replace(P, tod_residual=False)).process_batch(to_batch(cols), NOW_MS)
    assert tod.score[night] > flat.score[night]
    assert tod.severity[night] >= 0 > flat.severity[night]  # an event only where noise is local
