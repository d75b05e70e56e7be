"""``forecast_errors`` rows, from the matches of ``streams.ops.accuracy``, shaped like the table.

Duck-typed (``MatchesLike``) because ``sinks`` imports only ``schemas``, not ``streams``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.accuracy import percentage_error
from schemas.batch import ENTITY_KEY_SEP
from sinks.ddl_errors import FORECAST_ERRORS
from sinks.rows import TS, _table


class MatchesLike(Protocol):
    """What a row needs of a match: entity key, target, horizon, quantiles and the actual."""

    entity: np.ndarray
    target_ms: np.ndarray
    horizon_s: np.ndarray
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    actual: np.ndarray


def forecast_errors_table(m: MatchesLike, now_ms: int) -> pa.Table:
    """One row per matched forecast; ``pct_error`` in percent, NaN where the actual is 0."""
    n = int(m.horizon_s.size)
    parts = pc.split_pattern(pa.array(m.entity, type=pa.string()), ENTITY_KEY_SEP, max_splits=1)
    actual = np.asarray(m.actual, dtype=np.float64)
    p50 = np.asarray(m.p50, dtype=np.float64)
    f64 = pa.float64()
    return _table(
        FORECAST_ERRORS,
        {
            "entity_id": pc.list_element(parts, 1),
            "entity_kind": pc.list_element(parts, 0),
            "target_ts": pa.array(np.asarray(m.target_ms, dtype=np.int64)).cast(TS),
            "horizon_s": pa.array(np.asarray(m.horizon_s, dtype=np.int64)).cast(pa.uint32()),
            "p10": pa.array(np.asarray(m.p10, dtype=np.float64), type=f64),
            "p50": pa.array(p50, type=f64),
            "p90": pa.array(np.asarray(m.p90, dtype=np.float64), type=f64),
            "actual": pa.array(actual, type=f64),
            "abs_error": pa.array(np.abs(p50 - actual), type=f64),
            "pct_error": pa.array(100 * percentage_error(actual, p50), type=f64),
            "written_at": pa.array(np.full(n, now_ms, dtype=np.int64)).cast(TS),
        },
    )
