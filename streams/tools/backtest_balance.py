"""The energy balance over files: a backtest of meters and SCADA with a topology file.

The same pure core the live stage runs (``models.balance``), fed the readings of both files in
time order (meters and SCADA interleaved by ``ts``, as the live stage sees them once the
watermark has ordered them), with ``grid.topology`` read from a JSON-lines file
(``streams.runtime.topology_feed.load_file``; refused lines are reported with their reason).
Writes one CSV row per transformer and interval (the ``energy_balance`` columns) and returns the
``balance`` events.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.balance import BalanceCore, BalanceOutput, BalanceParams
from schemas.balance import COUNTS, MEASURES
from schemas.batch import Rejection
from streams.runtime.topology_feed import load_file
from streams.tools.backtest import read_input, reading_batches, write_output


def _readings(path: Path) -> tuple[np.ndarray, ...]:
    batches, _ = reading_batches(read_input(path))
    if not batches:
        return tuple(np.empty(0, dtype=t) for t in (object, object, np.int64, np.float64))
    ids = np.concatenate([b.entity for b in batches])
    kinds = np.concatenate([b.kind for b in batches])
    ts = np.concatenate([b.ts_ms for b in batches])
    value = np.concatenate([b.value for b in batches])
    return ids, kinds, ts, np.where(kinds == "meter", value, value * 1000.0)  # MW -> kW


def balance_files(
    meters: Path, scada: Path, topology: Path, output: Path, params: BalanceParams | None = None
) -> tuple[BalanceOutput, list[Rejection]]:
    """Balance the readings of ``meters`` and ``scada`` against ``topology``; rows to
    ``output``. Returns the output and the refused topology lines (by line index)."""
    topo, refused = load_file(topology)
    parts = [_readings(meters), _readings(scada)]
    ids, kinds, ts, kw = (np.concatenate([p[k] for p in parts]) for k in range(4))
    order = np.argsort(ts, kind="stable")
    core = BalanceCore(params, topo)
    out = core.process(ids[order], kinds[order], ts[order], kw[order])
    write_output(rows_frame(out), output)
    return out, refused


def rows_frame(out: BalanceOutput) -> pd.DataFrame:
    """The balance rows as a table with the ``energy_balance`` columns."""
    names = (*MEASURES, *COUNTS)
    frames = [
        pd.DataFrame(
            {
                "parent_id": r.parent_id,
                "interval_start": pd.to_datetime(r.interval_ms, unit="ms", utc=True),
                **{n: getattr(r, n) for n in names},
                "suspects": r.suspects,
            }
        )
        for r in out.rows
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
