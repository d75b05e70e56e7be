"""Calibrated tail probabilities: what a detector's statistic means for *this* entity.

Every detector produces a non-negative statistic (a standardised residual, a CUSUM sum, a ratio
of recent to long-run error). Its meaning differs by entity: a |z| of 6 is extraordinary for a
smooth transformer load and ordinary for a bursty count. So each (entity, detector) pair keeps an
online *peaks-over-threshold* model of its own statistic, as extreme value theory prescribes for
tails (Pickands-Balkema-de Haan; SPOT, Siffer et al. 2017):

- ``u``: the ``tail_quantile`` quantile of the statistic (at least 0), tracked by stochastic
  approximation (Robbins-Monro) with steps proportional to a running mean absolute deviation
  ``d``, and ``r``, the share of statistics above it (the nominal ``1 - tail_quantile`` unless
  the statistic has an atom, as novelty has at 0);
- ``m1``, ``m2``: running first and second moments of the excesses ``x - u`` when ``x > u``,
  from which a generalised Pareto tail is fitted by moments (shape ``xi = (1 - m1^2/var) / 2``,
  clipped to [0, ``tail_xi_max``]: never lighter than exponential, so a statistic with a heavy
  tail - bursts, counts, prices - is judged by its own heavy tail, not a Gaussian one).

``log10 P(X > x) = log10(r) + log10(GPD survival of x - u)`` for ``x > u``. Below ``u`` the
probability is not modelled and is interpolated towards 1, so a statistic below its own usual
upper range scores nothing. One excess counts at most ``tail_cap`` mean excesses in the moments
(``tail_alarm_cap`` if it scores at the emit threshold on its own), so a single huge incident, or
a long one, does not make every later reading of it look ordinary.

All functions work on a round (each entity at most once), score before learning, and keep their
memory in state columns of shape ``(n_tails,)`` per entity. No I/O, no clock.

>>> import numpy as np
>>> from models.params import ProcessorParams
>>> p = ProcessorParams()
>>> cols = {k: np.full((1, 1), v) for k, v in init_values().items()}
>>> rng = np.random.default_rng(1)
>>> for x in np.abs(rng.standard_t(3, 5000)):  # |Student t, 3 degrees of freedom|: heavy
...     _ = score_and_learn(cols, np.array([0]), 0, np.array([x]), p)
>>> x = np.array([3.0, 5.0, 8.0])
>>> tail = [cols[k][0, :1] for k in ("tail_u", "tail_m1", "tail_m2")]
>>> [round(float(-lp), 1) for lp in log10_tail(x, *tail, np.array([True]), p)]
[1.3, 1.9, 2.4]

The exact values are 1.2, 1.8 and 2.4: a |z| of 8 is ordinary for this entity. For a normal
statistic the exponential tail errs on the safe side (|z| = 5 gives about 4.3 decades for the
exact 6.2).
"""

from __future__ import annotations

import numpy as np

from models.params import ProcessorParams

LN10 = float(np.log(10.0))
# tail slot of each calibrated statistic in the state's tail columns
TAIL_SLOTS: dict[str, int] = {
    "residual": 0,
    "seasonal": 1,
    "channel": 2,
    "likelihood": 3,
    "level": 4,
    "novelty": 5,
    "hst": 6,
}
N_TAILS = len(TAIL_SLOTS)


def init_values() -> dict[str, float]:
    """Initial value of every tail state column (a fresh entity knows nothing)."""
    return {
        "tail_u": np.nan,
        "tail_d": np.nan,
        "tail_m1": np.nan,
        "tail_m2": np.nan,
        "tail_n": 0.0,
        "tail_k": 0.0,
        "tail_r": np.nan,
    }


def log10_tail(
    x: np.ndarray,
    u: np.ndarray,
    m1: np.ndarray,
    m2: np.ndarray,
    ready: np.ndarray,
    params: ProcessorParams,
    rate: np.ndarray | None = None,
) -> np.ndarray:
    """``log10 P(X > x)`` (<= 0) under the fitted tail; 0 where the tail is not ready.

    ``rate`` is the observed share of statistics above ``u`` (``1 - tail_quantile`` if None):
    it differs from the nominal share where the statistic has an atom, e.g. at 0."""
    q_tail = np.full(x.shape, 1.0 - params.tail_quantile) if rate is None else rate
    q_tail = np.clip(np.nan_to_num(q_tail, nan=1.0), 1e-6, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(m2 - m1 * m1, 1e-12)
        xi = np.clip(0.5 * (1.0 - m1 * m1 / var), 0.0, params.tail_xi_max)
        sigma = np.maximum(m1 * (1.0 - xi), 1e-12)
        y = np.maximum(x - u, 0.0)
        heavy = xi > 1e-6
        ln_surv = np.where(
            heavy,
            -np.log1p(np.where(heavy, xi, 1.0) * y / sigma) / np.where(heavy, xi, 1.0),
            -y / sigma,
        )
        above = np.log10(q_tail) + ln_surv / LN10
        below = np.log10(q_tail) * np.clip(x / np.where(u > 0, u, np.inf), 0.0, 1.0)
    out = np.where(x > u, above, below)
    return np.where(ready & np.isfinite(out), np.minimum(out, 0.0), 0.0)


def _ones(x: np.ndarray, value: float) -> np.ndarray:
    return np.full(x.shape, value)


def score_and_learn(
    c: dict[str, np.ndarray],
    s: np.ndarray,
    k: int | slice,
    x: np.ndarray,
    params: ProcessorParams,
    prior_z: bool | np.ndarray = False,
) -> np.ndarray:
    """``log10`` tail probability of statistic ``x`` for slots ``s`` and tail(s) ``k``, then
    learn x. ``k`` a slice of tails takes ``x`` of shape ``(len(s), tails)``: one call for
    several statistics, which is what keeps the per-round cost low.

    NaN statistics score 0 and teach nothing. Where ``prior_z`` (a standardised statistic; one
    flag per tail), a tail that is not ready yet scores against a wide exponential prior (tail
    from 3 with mean excess 1: |z| = 8 is 10^-3.7, only gross departures alarm), not 0: a new
    meter's first day is not blind to a reading a hundred scales off.
    """
    p = params
    u, d = c["tail_u"][s, k], c["tail_d"][s, k]
    m1, m2 = c["tail_m1"][s, k], c["tail_m2"][s, k]
    n, nk = c["tail_n"][s, k], c["tail_k"][s, k]
    r_old = c["tail_r"][s, k]
    ready = (n >= p.tail_min) & (nk >= p.tail_min_excess)
    ok = np.isfinite(x)
    x = np.where(ok, np.maximum(x, 0.0), 0.0)
    logp = np.where(ok, log10_tail(x, u, m1, m2, ready, p, r_old), 0.0)
    prior = np.asarray(prior_z, dtype=bool)
    if prior.any():  # a young tail of a z-like statistic: a wide exponential prior meanwhile
        young = log10_tail(x, _ones(x, 3.0), _ones(x, 1.0), _ones(x, 2.0), ok & ~ready, p)
        logp = np.where(ready | ~prior, logp, young)

    # -- learn -----------------------------------------------------------------------------------
    first = ~np.isfinite(u)
    d_new = np.where(
        first, np.maximum(x, 1e-9), d + np.maximum(1.0 / (n + 1.0), 0.02) * (np.abs(x - u) - d)
    )
    q_tail = 1.0 - p.tail_quantile
    over = x > u
    step = p.tail_step * np.maximum(d_new, 1e-12) * (over - q_tail)
    # while young, larger steps: the quantile first has to reach its range
    step = step * np.maximum(1.0, 10.0 * p.tail_min / (n + p.tail_min))
    u_new = np.where(first, x, np.maximum(u + step, 0.0))
    excess = np.where(over & ~first, x - u, np.nan)
    # An excess the tail already finds alarming teaches it as if it were a modest one: an
    # incident that lasts must not become normal within a few readings.
    alarming = logp <= -p.score_decades * p.emit_threshold
    cap = np.where(alarming, p.tail_alarm_cap, p.tail_cap) * np.nan_to_num(m1, nan=np.inf)
    capped = np.where(nk >= 10, np.minimum(excess, cap), excess)
    r = np.maximum(1.0 / (nk + 1.0), p.tail_rate)
    has = np.isfinite(capped)
    m1_new = np.where(np.isfinite(m1), m1 + r * (capped - m1), capped)
    m2_new = np.where(np.isfinite(m2), m2 + r * (capped * capped - m2), capped * capped)
    learn = ok
    c["tail_u"][s, k] = np.where(learn, u_new, u)
    c["tail_d"][s, k] = np.where(learn, d_new, d)
    c["tail_m1"][s, k] = np.where(learn & has, m1_new, m1)
    c["tail_m2"][s, k] = np.where(learn & has, m2_new, m2)
    c["tail_n"][s, k] = n + learn
    c["tail_k"][s, k] = nk + (learn & has)
    rr = np.maximum(1.0 / (n + 1.0), p.tail_share_rate)
    hit = (over & ~first).astype(np.float64)
    r_new = np.where(np.isfinite(r_old), r_old + rr * (hit - r_old), hit)
    c["tail_r"][s, k] = np.where(learn & ~first, r_new, r_old)
    return logp


def stuck_log10p(run: np.ndarray, repeat_rate: np.ndarray, params: ProcessorParams) -> np.ndarray:
    """``log10`` probability of ``run`` more identical readings, were repeats independent at the
    entity's own repeat rate (floored): geometric, so it needs no tail model of its own."""
    rate = np.clip(repeat_rate, params.stuck_rate_floor, 1.0)
    varies = repeat_rate <= params.stuck_max_repeat_rate
    return np.where(varies, run * np.log10(rate), 0.0)
