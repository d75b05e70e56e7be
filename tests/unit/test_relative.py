"""Relative departures (``models.relative``) for loads whose noise is a share of the load.

A meter's readings scatter by about the same share at night as at the evening peak, so an
absolute departure scale learned over the day hides a night-time step. Measured relatively, the
same step is a large departure, and the clean days stay quiet.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.params import ProcessorParams
from models.processor import GridProcessor
from models.relative import log_ratio
from tests.unit.builders import NOW_MS, daily_load, to_batch

DAY = 96  # readings per day at 15 minutes


def _multiplicative_meter(seed: int) -> dict[str, np.ndarray]:
    """Eight days of a meter with a night trough, an evening peak and 12 % log-normal noise."""
    cols = daily_load((("m", "meter"),), days=8, seed=seed, noise=0.0)
    rng = np.random.default_rng(seed)
    tod = (cols["ts_ms"] % 86_400_000) / 86_400_000
    shape = 0.25 + 0.75 * np.exp(-0.5 * ((tod - 0.8) / 0.08) ** 2)
    cols["value"] = 3.0 * shape * np.exp(0.12 * rng.standard_normal(tod.size))
    return cols


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_night_time_step_is_flagged_in_relative_terms(seed: int) -> None:
    cols = _multiplicative_meter(seed)
    step = np.arange(7 * DAY + 8, 7 * DAY + 32)  # 02:00 to 08:00: the load falls to 40 %
    cols["value"][step] *= 0.4
    params = replace(ProcessorParams(), relative="departure")
    res = GridProcessor(params).process_batch(to_batch(cols), NOW_MS)
    in_step = [
        e for e in res.anomalies if cols["ts_ms"][step[0]] <= e.ts_ms <= cols["ts_ms"][step[-1]]
    ]
    assert in_step and "seasonal" in in_step[0].fired, [e.fired for e in res.anomalies]
    clean = np.ones(res.score.size, dtype=bool)
    clean[: 3 * DAY] = False  # profiles still forming
    clean[step[0] : step[-1] + 8] = False  # the step and the two hours it echoes in
    assert np.nanmax(res.score[clean]) < params.emit_threshold


def test_entities_that_go_negative_keep_absolute_departures() -> None:
    c = {"nov_lo": np.array([0.0, -2.0, np.nan]), "nov_hi": np.array([4.0, 4.0, np.nan])}
    ok, r = log_ratio(c, np.arange(3), np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0]), 0.05)
    assert ok.tolist() == [True, False, False]  # a range below 0, or none yet: absolute terms
    assert r[0] == pytest.approx(np.log(1.2 / 2.2))
    assert r[1] == 0.0 and r[2] == 0.0


def test_unknown_relative_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="relative must be one of"):
        ProcessorParams(relative="sometimes")
