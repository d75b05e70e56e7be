"""The forecast-accuracy rule: which reading is a forecast's actual, and when it has a
percentage error. One definition for the live ``/metrics`` tracker (``streams.ops.accuracy``),
the demo's summary and the ClickHouse ``forecast_accuracy`` view (``sinks.views``).

- The actual of a forecast for ``target`` is its entity's first accepted reading at or after
  ``target`` and less than ``ACTUAL_TOLERANCE_S`` after it: grid-stamped meters match exactly,
  SCADA scan jitter is tolerated. A forecast whose entity's first reading after the target comes
  later than that (a gap) has no actual and is never scored.
- The percentage error is ``|actual - p50| / |actual|``; an actual of exactly 0 has none (it is
  left out of MAPE, and still counts in MAE and interval coverage).

>>> percentage_error(np.array([100.0, 0.0]), np.array([110.0, 1.0])).tolist()
[0.1, nan]
"""

from __future__ import annotations

import numpy as np

ACTUAL_TOLERANCE_S = 60


def percentage_error(actual: np.ndarray, p50: np.ndarray) -> np.ndarray:
    """``|actual - p50| / |actual|`` element-wise, NaN where the actual is 0."""
    actual = np.asarray(actual, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = np.abs(actual - np.asarray(p50, dtype=np.float64)) / np.abs(actual)
    return np.where(actual == 0, np.nan, ape)
