"""The tail-probability detectors (``likelihood``, ``level``) and the severities they give.

Behaviour, not figures: a spike is critical while ordinary noise is not, a slow drift and a step
are flagged, scores map tail probabilities monotonically into [0, 1], and the new per-entity
state is independent of batch cuts and carried by snapshots.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.params import ProcessorParams
from models.processor import GridProcessor
from tests.unit.builders import NOW_MS, daily_load, rows_of, split, to_batch

P = ProcessorParams()
DAY = 96  # readings per day at 15 minutes


def _run(cols: dict[str, np.ndarray], params: ProcessorParams = P):  # noqa: ANN202
    proc = GridProcessor(params)
    return proc, proc.process_batch(to_batch(cols), NOW_MS)


def test_a_spike_is_critical_and_normal_noise_is_not() -> None:
    cols = daily_load((("m", "meter"),), days=7, seed=5)
    spike = 6 * DAY + 40
    cols["value"][spike] *= 3.0
    _, res = _run(cols)
    assert res.severity[spike] == 2, res.score[spike]  # critical
    quiet = np.isfinite(res.score)
    quiet[spike : spike + 2 * DAY // 3] = False  # the spike and the hours it echoes in averages
    quiet[: 2 * DAY] = False  # the first days: profiles and long-run statistics still forming
    assert not np.any(res.severity[quiet] == 2)
    assert np.mean(res.severity[quiet] >= 0) < 0.01  # at most a stray info/warning in 100


@pytest.mark.xfail(
    strict=True,
    reason="known gap (issue 11): the level statistic's calibrated tail drifts with the statistic "
    "itself, so a slow +60 % drift over 3 days is not flagged",
)
def test_a_slow_drift_is_flagged_by_the_level_detector() -> None:
    # the level statistic starts once the profile is trusted, and its tail needs history too
    cols = daily_load((("d", "meter"), ("c", "meter")), days=14, seed=8)
    rows = rows_of(cols, "d")
    ramp = rows[11 * DAY :]
    cols["value"][ramp] += np.linspace(0.0, 1.2, ramp.size)  # +60 % of the mean over 3 days
    _, res = _run(cols)
    events = [e for e in res.anomalies if e.entity_id == "d" and e.ts_ms >= cols["ts_ms"][ramp[0]]]
    assert events, "the drift raised no event"
    assert any("level" in e.fired for e in events), [e.fired for e in events]
    assert events[0].score >= P.emit_threshold
    clean = [e for e in res.anomalies if e.entity_id == "c" and e.ts_ms >= cols["ts_ms"][2 * DAY]]
    assert len(clean) <= 2


def test_a_level_step_is_flagged_at_once() -> None:
    cols = daily_load((("s", "meter"),), days=7, seed=4)
    at = 6 * DAY + 20
    cols["value"][at:] += 1.0  # half the mean, for good
    _, res = _run(cols)
    assert np.nanmax(res.score[at : at + 2]) >= P.emit_threshold
    assert any(at <= int(np.flatnonzero(cols["ts_ms"] == e.ts_ms)[0]) <= at + 2
               for e in res.anomalies)


def test_new_state_is_independent_of_batch_cuts_and_restored_by_snapshots() -> None:
    cols = daily_load((("a", "meter"), ("b", "meter"), ("f", "feeder")), days=4, seed=2)
    cols["value"][3 * DAY * 3 + 7] *= 2.5
    whole = to_batch(cols)
    one = GridProcessor(P)
    r_one = one.process_batch(whole, NOW_MS)
    cuts = sorted(np.random.default_rng(1).choice(np.arange(1, len(whole)), 30, replace=False))
    pieces = split(whole, [int(c) for c in cuts])
    many = GridProcessor(P)
    half = len(pieces) // 2
    scores = [many.process_batch(b, NOW_MS).score for b in pieces[:half]]
    many = GridProcessor.from_snapshot(many.snapshot())  # a restart in the middle
    scores += [many.process_batch(b, NOW_MS).score for b in pieces[half:]]
    np.testing.assert_array_equal(r_one.score, np.concatenate(scores))
    a = one.state.snapshot()["cols"]
    b = many.state.snapshot()["cols"]
    for name in ("err_scale", "err_short", "err_mean", "err_var", "lik_n", "lvl_short",
                 "lvl_mean", "lvl_var", "lvl_n", "lvl_dev"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
