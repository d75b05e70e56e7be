"""The vectorised detectors (models/detectors.py): ranges, monotonicity, floors, resets.

Properties only, no score values: the shapes of these curves are tuning the models may change.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models import detectors as det
from models.params import ProcessorParams

P = ProcessorParams()
GRID = np.linspace(-50.0, 50.0, 2001)


def _in_unit(x: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(x)) and np.all(x >= 0.0) and np.all(x <= 1.0))


@pytest.mark.parametrize(("mid", "width"), [(0.0, 1.0), (6.0, 0.8), (10.0, 2.0), (3.0, 0.01)])
def test_logistic_is_monotone_in_unit_interval_and_half_at_mid(mid: float, width: float) -> None:
    y = det.logistic(GRID, mid, width)
    assert _in_unit(y)
    assert np.all(np.diff(y) >= 0.0)
    assert det.logistic(np.array([mid]), mid, width)[0] == pytest.approx(0.5)
    # far tails do not overflow into NaN
    assert _in_unit(det.logistic(np.array([-1e300, 1e300]), mid, width))


def test_z_score_is_symmetric_monotone_in_abs_z_and_in_unit_interval() -> None:
    z = np.linspace(0.0, 100.0, 1001)
    up = det.z_score(z, P)
    assert _in_unit(up)
    assert np.all(np.diff(up) >= 0.0)
    np.testing.assert_array_equal(det.z_score(-z, P), up)
    assert det.z_score(np.array([P.z_mid]), P)[0] == pytest.approx(0.5)
    assert up[0] < 0.05 and up[-1] > 0.95


ALL_DETECTORS = [name for name, _ in P.weights]


def test_fuse_is_in_unit_interval_and_zero_when_all_detectors_are() -> None:
    rng = np.random.default_rng(1)
    scores = {name: rng.uniform(0.0, 1.0, 500) for name in ALL_DETECTORS}
    assert _in_unit(det.fuse(scores, P))
    zeros = {name: np.zeros(3) for name in ALL_DETECTORS}
    np.testing.assert_array_equal(det.fuse(zeros, P), 0.0)
    # out-of-range inputs are clipped, not propagated
    wild = {name: np.array([-3.0, 7.0]) for name in ALL_DETECTORS}
    assert _in_unit(det.fuse(wild, P))


@pytest.mark.parametrize("name", ALL_DETECTORS)
def test_fuse_is_monotone_in_every_detector(name: str) -> None:
    rng = np.random.default_rng(ALL_DETECTORS.index(name))
    base = {d: np.repeat(rng.uniform(0.0, 1.0, (50, 1)), 101, axis=1) for d in ALL_DETECTORS}
    base[name] = np.tile(np.linspace(0.0, 1.0, 101), (50, 1))
    fused = det.fuse(base, P)
    assert np.all(np.diff(fused, axis=1) >= -1e-15)
    assert fused[:, -1].min() > fused[:, 0].min() or dict(P.weights)[name] == 0.0


def test_fuse_one_strong_detector_raises_the_score_agreement_raises_it_more() -> None:
    quiet = {d: np.array([0.0]) for d in ALL_DETECTORS}
    one = dict(quiet, residual=np.array([0.8]))
    two = dict(one, seasonal=np.array([0.8]))
    assert det.fuse(quiet, P)[0] < det.fuse(one, P)[0] < det.fuse(two, P)[0]


def test_fuse_ignores_missing_detectors_and_refuses_none() -> None:
    assert _in_unit(det.fuse({"residual": np.array([0.2, 0.9])}, P))
    with pytest.raises(ValueError, match="no detector"):
        det.fuse({}, P)


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
    np.testing.assert_array_equal(det.severity_rank(score, P), [-1, -1, 0, 0, 1, 1, 2, 2])
    grid = np.linspace(0.0, 1.0, 1001)
    assert np.all(np.diff(det.severity_rank(grid, P)) >= 0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cusum_accumulates_alarms_then_resets(sign: float) -> None:
    pos, neg = np.zeros(1), np.zeros(1)
    z = np.array([sign * 5.0])
    seen_high = False
    for _ in range(100):
        before = max(pos[0], neg[0])
        pos, neg, score = det.cusum_update(pos, neg, z, P)
        assert _in_unit(score)
        seen_high |= score[0] > 0.9
        if max(pos[0], neg[0]) == 0.0 and before > 0.0:
            break  # reset after the alarm, so it can fire again
    else:
        pytest.fail("CUSUM never reset after alarming")
    assert seen_high
    # starting from zero again, one quiet step does not alarm
    _, _, quiet = det.cusum_update(pos, neg, np.zeros(1), P)
    assert quiet[0] < 0.5


def test_cusum_stays_at_zero_for_departures_within_the_slack() -> None:
    pos, neg = np.zeros(4), np.zeros(4)
    z = np.array([0.0, P.cusum_k, -P.cusum_k, 0.5 * P.cusum_k])
    for _ in range(1000):
        pos, neg, score = det.cusum_update(pos, neg, z, P)
    np.testing.assert_array_equal(pos, 0.0)
    np.testing.assert_array_equal(neg, 0.0)
    assert np.all(score < 0.5)


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


def test_stuck_score_grows_with_the_run_and_is_gated_by_the_repeat_rate() -> None:
    run = np.arange(0, 60)
    varies = det.stuck_score(run, np.zeros(run.size), P)
    assert _in_unit(varies)
    assert np.all(np.diff(varies) >= 0.0) and varies[0] < 0.05 and varies[-1] > 0.95
    repeats = det.stuck_score(run, np.full(run.size, P.stuck_max_repeat_rate * 2), P)
    np.testing.assert_array_equal(repeats, 0.0)


def _calibration_state(n: int) -> dict[str, np.ndarray]:
    return {
        "score_mean": np.full(n, np.nan),
        "score_var": np.full(n, np.nan),
        "score_n": np.zeros(n, dtype=np.int64),
    }


def test_calibration_discounts_scores_that_are_routine_for_the_entity() -> None:
    """Entity 0 scores high all the time, entity 1 almost never: after the calibration warm-up
    the same raw 0.95 is discounted on the first and kept on the second."""
    p = ProcessorParams()
    cols = _calibration_state(2)
    s = np.array([0, 1])
    warm = np.array([True, True])
    rng = np.random.default_rng(0)
    for _ in range(p.calibration_min + 50):
        raw = np.array([rng.uniform(0.7, 1.0), rng.uniform(0.0, 0.02)])
        det.calibrate(raw, cols, s, warm, p)
    out = det.calibrate(np.array([0.9, 0.9]), cols, s, warm, p)
    assert out[0] < 0.75  # critical on its own, ordinary for this entity
    assert out[1] > 0.89  # rare for this one: it keeps its severity
    assert np.all((out >= 0) & (out <= 0.9))  # never raises a score


def test_calibration_leaves_scores_alone_until_warm_and_ignores_cold_rows() -> None:
    p = ProcessorParams()
    cols = _calibration_state(1)
    raw = np.array([0.9])
    assert det.calibrate(raw, cols, np.array([0]), np.array([True]), p)[0] == 0.9
    before = {k: v.copy() for k, v in cols.items()}
    det.calibrate(raw, cols, np.array([0]), np.array([False]), p)
    for k in cols:
        np.testing.assert_array_equal(cols[k], before[k])
