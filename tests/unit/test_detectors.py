"""The detectors' building blocks: standardisation, CUSUM, calibrated tails, novelty, fusion.

Properties only, no score values: the shapes of these curves are tuning the models may change.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models import detectors as det
from models import fusion, novelty, tails
from models.params import ProcessorParams

P = ProcessorParams()
GRID = np.linspace(-50.0, 50.0, 2001)


def _in_unit(x: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(x)) and np.all(x >= 0.0) and np.all(x <= 1.0))


ALL_DETECTORS = list(P.detectors)


def _logp(rng: np.random.Generator, n: int) -> np.ndarray:
    return -rng.exponential(2.0, n)


def test_fused_score_is_in_unit_interval_and_zero_when_nothing_is_unusual() -> None:
    rng = np.random.default_rng(1)
    logp = {name: _logp(rng, 500) for name in ALL_DETECTORS}
    assert _in_unit(fusion.score_of(fusion.fuse(logp, P), P))
    zeros = {name: np.zeros(3) for name in ALL_DETECTORS}
    np.testing.assert_array_equal(fusion.score_of(fusion.fuse(zeros, P), P), 0.0)
    wild = {name: np.array([-1e300, -np.inf, 0.0]) for name in ALL_DETECTORS}
    assert _in_unit(fusion.score_of(fusion.fuse(wild, P), P))


@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_fused_score_is_monotone_in_every_detector(name: str) -> None:
    rng = np.random.default_rng(ALL_DETECTORS.index(name))
    base = {d: np.repeat(_logp(rng, 50)[:, None], 101, axis=1) for d in ALL_DETECTORS}
    base[name] = np.tile(np.linspace(0.0, -30.0, 101), (50, 1))
    fused = fusion.score_of(fusion.fuse(base, P), P)
    assert np.all(np.diff(fused, axis=1) >= -1e-15)
    assert fused[:, -1].min() > fused[:, 0].min()


def test_fusion_is_bonferroni_one_strong_detector_is_enough_and_its_meaning_is_kept() -> None:
    quiet = {d: np.array([0.0]) for d in ALL_DETECTORS}
    one = dict(quiet, residual=np.array([-8.0]))
    fused = fusion.fuse(one, P)[0]
    assert fused == pytest.approx(-8.0 + np.log10(len(ALL_DETECTORS)))
    assert fusion.score_of(np.array([fused]), P)[0] == pytest.approx(-fused / P.score_decades)


def test_fusion_ignores_missing_detectors_and_refuses_none() -> None:
    assert _in_unit(fusion.score_of(fusion.fuse({"residual": np.array([-2.0, -9.0])}, P), P))
    with pytest.raises(ValueError, match="no detector"):
        fusion.fuse({}, P)


def test_severity_rank_thresholds() -> None:
    th = dict(P.severity_thresholds)
    eps = 1e-9
    score = np.array(
        [
            0.0,
            th["info"] - eps,
            th["info"],
            th["warning"] - eps,
            th["warning"],
            th["critical"] - eps,
            th["critical"],
            1.0,
        ]
    )
    np.testing.assert_array_equal(fusion.severity_rank(score, P), [-1, -1, 0, 0, 1, 1, 2, 2])
    grid = np.linspace(0.0, 1.0, 1001)
    assert np.all(np.diff(fusion.severity_rank(grid, P)) >= 0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cusum_accumulates_alarms_then_resets(sign: float) -> None:
    pos, neg = np.zeros(1), np.zeros(1)
    z = np.array([sign * 5.0])
    seen_high = False
    for _ in range(100):
        before = max(pos[0], neg[0])
        pos, neg, stat = det.cusum_update(pos, neg, z, P)
        assert stat[0] >= 0.0
        seen_high |= stat[0] > 2.0 * P.cusum_h
        if max(pos[0], neg[0]) == 0.0 and before > 0.0:
            break  # reset after the alarm, so it can fire again
    else:
        pytest.fail("CUSUM never reset after alarming")
    assert seen_high
    # starting from zero again, one quiet step does not alarm
    _, _, quiet = det.cusum_update(pos, neg, np.zeros(1), P)
    assert quiet[0] == 0.0


def test_cusum_stays_at_zero_for_departures_within_the_slack() -> None:
    pos, neg = np.zeros(4), np.zeros(4)
    z = np.array([0.0, P.cusum_k, -P.cusum_k, 0.5 * P.cusum_k])
    for _ in range(1000):
        pos, neg, stat = det.cusum_update(pos, neg, z, P)
    np.testing.assert_array_equal(pos, 0.0)
    np.testing.assert_array_equal(neg, 0.0)
    np.testing.assert_array_equal(stat, 0.0)


@pytest.mark.parametrize(
    ("resid", "scale", "reference"),
    list(
        itertools.product(
            [0.0, 1.0, -1e6, np.nan, np.inf],
            [0.0, np.nan, 1e-300, 5.0],
            [0.0, np.nan, 230.0, -3.0],
        )
    ),
)
def test_robust_z_is_always_finite(resid: float, scale: float, reference: float) -> None:
    finite = all(np.isfinite(x) for x in (resid, scale, reference))
    # finite inputs: not even a division-by-zero warning; any input: a finite z
    with np.errstate(all="raise" if finite else "ignore"):
        z = det.robust_z(np.array([resid]), np.array([scale]), np.array([reference]))
    assert np.all(np.isfinite(z))


def test_robust_z_floors_a_zero_scale_and_keeps_the_sign() -> None:
    z = det.robust_z(np.array([1.0, -1.0, 0.0]), np.zeros(3), np.array([2.0, 2.0, 2.0]))
    assert np.all(np.isfinite(z))
    assert z[0] > 0 > z[1] and z[2] == 0.0
    # a larger scale means a smaller z for the same residual
    small = det.robust_z(np.array([1.0]), np.array([0.1]), np.array([2.0]))
    large = det.robust_z(np.array([1.0]), np.array([1.0]), np.array([2.0]))
    assert abs(small[0]) > abs(large[0])


def test_stuck_probability_falls_with_the_run_and_is_gated_by_the_repeat_rate() -> None:
    run = np.arange(0, 60)
    varies = tails.stuck_log10p(run, np.zeros(run.size), P)
    assert varies[0] == 0.0 and np.all(np.diff(varies) < 0.0)
    repeats = tails.stuck_log10p(run, np.full(run.size, P.stuck_max_repeat_rate * 2), P)
    np.testing.assert_array_equal(repeats, 0.0)


def _tail_state(n: int) -> dict[str, np.ndarray]:
    return {k: np.full((n, tails.N_TAILS), v) for k, v in tails.init_values().items()}


def _feed(cols: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """Feed column j of ``xs`` (time x entities) to entity j, tail 0; the last log10 p's."""
    s = np.arange(xs.shape[1])
    out = np.zeros(xs.shape[1])
    for row in xs:
        out = tails.score_and_learn(cols, s, 0, row, P)
    return out


def test_a_tail_is_silent_until_it_has_learned_enough() -> None:
    cols = _tail_state(1)
    rng = np.random.default_rng(3)
    young = _feed(cols, np.abs(rng.standard_normal((P.tail_min - 1, 1))))
    assert young[0] == 0.0
    assert tails.score_and_learn(cols, np.array([0]), 0, np.array([1e6]), P)[0] == 0.0


def test_the_same_statistic_is_rare_for_a_smooth_entity_and_ordinary_for_a_bursty_one() -> None:
    """Entity 0's statistic is |normal|, entity 1's |Student t(1.5)|: after learning, 8 is
    far beyond entity 0's tail and unremarkable for entity 1."""
    cols = _tail_state(2)
    rng = np.random.default_rng(4)
    xs = np.column_stack([np.abs(rng.standard_normal(4000)), np.abs(rng.standard_t(1.5, 4000))])
    _feed(cols, xs)
    lp = tails.score_and_learn(cols, np.array([0, 1]), 0, np.array([8.0, 8.0]), P)
    assert lp[0] < -5.0 and lp[1] > -2.5


def test_tail_probabilities_are_calibrated_on_fresh_draws() -> None:
    """On new draws from what was learned, P(log10 p <= -2) is about 1 % (not 10 %, not 0.01 %)."""
    cols = _tail_state(400)
    rng = np.random.default_rng(5)
    _feed(cols, np.abs(rng.standard_t(4, (3000, 400))))
    fresh = np.abs(rng.standard_t(4, (50, 400)))
    lps = np.concatenate([tails.score_and_learn(cols, np.arange(400), 0, r, P) for r in fresh])
    share = float(np.mean(lps <= -2.0))
    assert 0.002 < share < 0.03, share


def test_nan_statistics_score_nothing_and_teach_nothing() -> None:
    cols = _tail_state(1)
    before = {k: v.copy() for k, v in cols.items()}
    assert tails.score_and_learn(cols, np.array([0]), 0, np.array([np.nan]), P)[0] == 0.0
    for k in cols:
        np.testing.assert_array_equal(cols[k], before[k])


def test_novelty_is_zero_inside_the_range_and_grows_outside_it() -> None:
    c = {"nov_lo": np.array([np.nan]), "nov_hi": np.array([np.nan])}
    s = np.array([0])
    assert np.isnan(novelty.overshoot_and_learn(c, s, np.array([5.0]), P)[0])
    for v in (0.0, 10.0, 3.0, 7.0):
        novelty.overshoot_and_learn(c, s, np.array([v]), P)
    inside = novelty.overshoot_and_learn(c, s, np.array([5.0]), P)[0]
    near = novelty.overshoot_and_learn(c, s, np.array([12.0]), P)[0]
    far = novelty.overshoot_and_learn(c, s, np.array([40.0]), P)[0]
    assert inside == 0.0 and 0.0 < near < far


def test_the_top_of_the_scale_ranks_and_never_saturates() -> None:
    decades = np.array([7.2, 8.0, 10.0, 20.0, 40.0, 80.0])
    score = fusion.score_of(-decades, P)
    assert score[0] == pytest.approx(0.9)
    assert np.all(np.diff(score) > 0) and np.all(score < 1.0)
    below = np.linspace(0.0, 7.2, 50)  # severities keep their decades
    np.testing.assert_allclose(fusion.score_of(-below, P), below / P.score_decades)
