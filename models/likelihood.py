"""Tail-probability detectors: how unlikely is the recent behaviour given the entity's long run?

Two detectors in the spirit of Numenta's *anomaly likelihood* and NAB's *windowedGaussian*, both
online, per entity, vectorised over a round (each entity at most once), score before learning:

- ``likelihood``: the recent average prediction error against the long-run distribution of that
  average. The one-step residual of the nowcast is divided by a slow scale of the entity's
  residuals (so it is comparable over time and a burst of errors is not normalised away as the
  fast ``scale`` would), averaged over the last readings (``lik_short_rate``), and compared with
  a slow running mean and variance of the same average (``lik_long_rate``). A spike, a step, a
  burst of noise or a changed rhythm all raise the recent error above its long-run level.
- ``level``: the recent average *value* (or, once the time-of-day profile is trusted, the
  departure from it) against its own long-run mean and variance, two-sided: slow drift and level
  shifts that the one-step nowcast follows too quickly to see in its residuals. Once the entity
  has ``weekly_min_weeks`` weeks of departures, the departure is also taken from the weekly
  profile (per hour of the week), so weekday rhythms are not level shifts; each change of input
  restarts its statistics, and it scores from ``lvl_min`` readings of them on.

Each gives a statistic (``z`` of the recent error above its long-run mean; ``|z|`` of the recent
level); ``models.tails`` turns it into a tail probability under the entity's own history of it.
The long-run statistics learn winsorised values (at ``lik_clip`` deviations), so an incident does
not become normal within a few readings, while a lasting change is learned in about
``1 / lik_long_rate`` readings.

"""

from __future__ import annotations

import numpy as np

from models.params import ProcessorParams


def _running(
    mean: np.ndarray, var: np.ndarray, n: np.ndarray, x: np.ndarray, rate: float, clip: float
) -> tuple[np.ndarray, np.ndarray]:
    """One step of an exponentially weighted mean/variance (a plain mean while ``n`` is small),
    learning ``x`` winsorised at ``clip`` standard deviations once it has a variance."""
    r = np.maximum(1.0 / (n + 1.0), rate)
    first = ~np.isfinite(mean)
    sd = np.sqrt(np.nan_to_num(var))
    bounded = (n >= 30) & (sd > 0)
    xc = np.where(bounded, np.clip(x, mean - clip * sd, mean + clip * sd), x)
    d = xc - np.where(first, xc, mean)
    new_mean = np.where(first, xc, mean + r * d)
    new_var = np.where(first, 0.0, (1.0 - r) * (np.nan_to_num(var) + r * d * d))
    ok = np.isfinite(x)
    return np.where(ok, new_mean, mean), np.where(ok, new_var, var)


def _z(x: np.ndarray, mean: np.ndarray, var: np.ndarray, floor: np.ndarray) -> np.ndarray:
    sd = np.maximum(np.sqrt(np.nan_to_num(var)), floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - mean) / sd
    return np.where(np.isfinite(z), z, 0.0)


def score_and_learn(
    c: dict[str, np.ndarray],
    s: np.ndarray,
    v: np.ndarray,
    resid: np.ndarray,
    dev_s: np.ndarray,
    prof_trusted: np.ndarray,
    weekly: np.ndarray,
    params: ProcessorParams,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scores of one round against the state before it, then the state updated in place.

    Returns ``({"likelihood": ..., "level": ...}, features)``: the two statistics (NaN until
    their long-run statistics have enough readings), and the signed z values for explanations
    and the batch anomaly model. ``models.tails`` turns the statistics into probabilities.
    """
    p = params
    n = c["lik_n"][s]
    ready = n >= p.lik_min
    # -- likelihood: recent mean |error| over its long-run distribution -------------------------
    err_scale = c["err_scale"][s]
    abs_err = np.abs(resid)
    scale_ok = np.isfinite(err_scale) & (err_scale > 0)
    floor_e = 1e-3 * np.maximum(np.abs(np.nan_to_num(c["level"][s])), 1e-6)
    e = np.where(scale_ok, abs_err / np.maximum(err_scale, floor_e), np.nan)
    e = np.minimum(e, 50.0)  # one absurd reading moves the average by a bounded amount
    short_old = c["err_short"][s]
    short = np.where(
        np.isfinite(e),
        np.where(np.isfinite(short_old), short_old + p.lik_short_rate * (e - short_old), e),
        short_old,
    )
    z_lik = _z(short, c["err_mean"][s], c["err_var"][s], np.full(s.size, p.lik_floor))
    lik = np.where(ready, np.maximum(z_lik, 0.0), np.nan)
    # -- level: recent mean value (or departure from the profile) over its long-run spread ------
    x = np.where(prof_trusted, dev_s, v)
    old_mode = c["lvl_dev"][s]
    mode = np.maximum(old_mode, np.where(weekly, 2, np.where(prof_trusted, 1, 0)))
    # The profile (or the weekly profile) just became trusted: restart on the new departures.
    switch = mode > old_mode
    lvl_short_old = np.where(switch, np.nan, c["lvl_short"][s])
    lvl_short = np.where(
        np.isfinite(lvl_short_old), lvl_short_old + p.lvl_short_rate * (x - lvl_short_old), x
    )
    lvl_mean = np.where(switch, np.nan, c["lvl_mean"][s])
    lvl_var = np.where(switch, np.nan, c["lvl_var"][s])
    lvl_n = np.where(switch, 0, c["lvl_n"][s])
    floor_l = 1e-3 * np.maximum(np.abs(np.nan_to_num(c["level"][s])), 1e-6)
    z_lvl = _z(lvl_short, lvl_mean, lvl_var, floor_l)
    level = np.where(ready & (lvl_n >= p.lvl_min), np.abs(z_lvl), np.nan)

    # -- learn -----------------------------------------------------------------------------------
    c["err_scale"][s] = np.where(
        np.isfinite(abs_err),
        np.where(
            scale_ok,
            err_scale
            + np.maximum(1.0 / (n + 1.0), p.lik_long_rate)
            * (np.minimum(abs_err, 6.0 * err_scale) - err_scale),
            abs_err,
        ),
        err_scale,
    )
    c["err_short"][s] = short
    c["err_mean"][s], c["err_var"][s] = _running(
        c["err_mean"][s], c["err_var"][s], n, short, p.lik_long_rate, p.lik_clip
    )
    c["lik_n"][s] = n + np.isfinite(e)
    c["lvl_short"][s] = lvl_short
    c["lvl_mean"][s], c["lvl_var"][s] = _running(
        lvl_mean, lvl_var, lvl_n, lvl_short, p.lvl_long_rate, p.lik_clip
    )
    c["lvl_n"][s] = lvl_n + np.isfinite(x)
    c["lvl_dev"][s] = mode.astype(np.int8)
    return {"likelihood": lik, "level": level}, {"z_lik": z_lik, "z_lvl": z_lvl}
