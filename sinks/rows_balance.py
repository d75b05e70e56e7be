"""``energy_balance`` rows as an Arrow table shaped like the ClickHouse table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from schemas.balance import MEASURES, BalanceRows
from sinks.ddl_balance import ENERGY_BALANCE
from sinks.rows import TS, _table


def _cat(rows: Sequence[BalanceRows], name: str) -> np.ndarray:
    return np.concatenate([getattr(r, name) for r in rows])


def energy_balance_table(rows: Sequence[BalanceRows], now_ms: int) -> pa.Table:
    """One row per parent and closed interval; ``written_at`` is ``now_ms``."""
    n = sum(len(r) for r in rows)
    starts = np.concatenate([np.full(len(r), r.interval_ms, dtype=np.int64) for r in rows])
    floats = {name: pa.array(_cat(rows, name), type=pa.float64()) for name in MEASURES}
    return _table(
        ENERGY_BALANCE,
        {
            "parent_id": pa.array(_cat(rows, "parent_id").tolist(), type=pa.string()),
            "parent_kind": pa.array(["transformer"] * n, type=pa.string()),
            "interval_start": pa.array(starts, type=pa.int64()).cast(TS),
            **floats,
            "children": pa.array(_cat(rows, "children"), type=pa.uint32()),
            "missing": pa.array(_cat(rows, "missing"), type=pa.uint32()),
            "alarm": pa.array(_cat(rows, "alarm"), type=pa.bool_()),
            "suspects": pa.array([s for r in rows for s in r.suspects], type=pa.string()),
            "written_at": pa.array(np.full(n, now_ms, dtype=np.int64)).cast(TS),
        },
    )
