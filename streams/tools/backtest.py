"""``gridstream backtest``: the live processor's code path over a CSV or Parquet file, no Kafka.

Each row of the file becomes the JSON record a producer would send and goes through the live
decoder (``schemas.decode.decode_batch``), so a row the service would dead-letter is dead-lettered
here with the same reason, and the run goes on. Valid readings are fed to the live run's
per-partition cores (``streams.state.tasks.TaskSet``): each entity goes to the partition a
producer's default partitioner sends its key to (``partition_of``, ``--partitions N``, default 1),
so with the live topic's partition count the backtest computes what production computed (an
integration test compares the two record for record). Readings are fed in batches that interleave
entities by time (wide rounds are what make the core fast), while each entity's rows keep their
file order, so a meter whose rows go back in time gets ``out_of_order`` rejections exactly as it
would live. The output has one row per input row, in input order.

The time-window rule of the live decoder is switched off (history is the point of a backtest);
``now`` is the file's latest reading plus 1 ms. Every input arrives in the same global order
whatever the batch size, so the output does not depend on it (a test checks this).

>>> import pandas as pd
>>> rows = pd.DataFrame({"meter_id": "m", "ts": ["0", "900000", "1800000"], "kw": ["1", "x", "2"]})
>>> out, _ = backtest_frame(rows)
>>> out["dead_letter"].fillna("").tolist()
['', 'invalid_type', '']
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from models.ensemble import NowcastEnsemble
from models.params import ProcessorParams
from models.processor import ProcessResult
from schemas.batch import AnomalyRecord, ReadingBatch, entity_key
from schemas.decode import METER, SCADA, decode_batch
from schemas.exceptions import GridstreamError
from schemas.outputs import SEVERITIES
from schemas.readings import MAX_TS_MS, MIN_TS_MS
from streams.state.tasks import TaskSet, partition_of

DEFAULT_BATCH_SIZE = 5000
# Contract fields read from the file, by kind of value; other columns are ignored.
_TEXT = {METER: ("meter_id", "quality"), SCADA: ("asset_id", "asset_kind", "quality")}
_NUMBERS = {
    METER: ("kw", "kvar", "voltage_v", "current_a"),
    SCADA: ("p_mw", "q_mvar", "voltage_kv", "current_a", "frequency_hz", "temperature_c"),
}
_REQUIRED = {METER: ("meter_id", "ts", "kw"), SCADA: ("asset_id", "asset_kind", "ts", "p_mw")}
_NUMBER_RE = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_MISSING = object()  # a cell the producer would leave out of its record


class BacktestInputError(GridstreamError, ValueError):
    """The input file cannot be backtested as a whole (unreadable, or a required column absent).

    Problems of single rows are not errors: those rows are dead-lettered in the output.
    """


@dataclass(slots=True)
class BacktestResult:
    """Per input row (index = row number): what the processor made of it."""

    horizons_s: tuple[int, ...]
    score: np.ndarray  # float64, NaN while warming up, dropped or dead-lettered
    severity: np.ndarray  # int64 rank: -1 none, 0 info, 1 warning, 2 critical
    expected: np.ndarray  # float64: the one-step expectation the row was scored against
    quantiles: np.ndarray  # float64 (3, rows, horizons): p10, p50, p90 issued at the row
    dead_letter: list[str | None]  # error class, None if the row was not dead-lettered
    dead_letter_error: list[str | None]
    events: list[AnomalyRecord] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    batches: int = 0

    def __len__(self) -> int:
        return int(self.score.shape[0])


# -- the core: JSON records in, per-row results out ------------------------------------------
def backtest_values(
    values: Sequence[bytes | None],
    contracts: Sequence[str],
    params: ProcessorParams | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[ReadingBatch, ProcessResult], None] | None = None,
    ensemble: NowcastEnsemble | None = None,
    partitions: int = 1,
) -> BacktestResult:
    """Decode records as the live service does, process them, and map results back to rows.

    ``on_batch`` sees every processed batch (readings whose ``src_index`` is the row number).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    params = params or ProcessorParams()
    n = len(values)
    horizons = tuple(params.horizons_s)
    out = BacktestResult(
        horizons_s=horizons,
        score=np.full(n, np.nan),
        severity=np.full(n, -1, dtype=np.int64),
        expected=np.full(n, np.nan),
        quantiles=np.full((3, n, len(horizons)), np.nan),
        dead_letter=[None] * n,
        dead_letter_error=[None] * n,
    )
    # No time-window rule: every instant a timestamp can hold is accepted.
    decoded = decode_batch(
        values, contracts, now_ms=MAX_TS_MS, max_age_ms=MAX_TS_MS - MIN_TS_MS, max_future_ms=0
    )
    for r in decoded.rejections:
        out.dead_letter[r.src_index] = r.error_class
        out.dead_letter_error[r.src_index] = r.error
    out.counters["rows"] = n
    out.counters["dead_letters"] = len(decoded.rejections)
    readings = decoded.readings
    if len(readings) == 0:
        return out
    now_ms = int(readings.ts_ms.max()) + 1
    tasks = TaskSet(params, ensemble)
    # one task per (contract, partition), as live has one per (input topic, partition)
    tids = [(c, p) for c in (METER, SCADA) for p in range(partitions)]
    is_scada = np.array([contracts[i] == SCADA for i in readings.src_index.tolist()], dtype=bool)
    task = partition_of(readings.entity, partitions) + partitions * is_scada
    column = {h: k for k, h in enumerate(horizons)}
    for order in _arrival_batches(readings, batch_size):
        batch = readings.take(order)
        res = tasks.process(batch, task[order], tids, now_ms).result
        _record(out, batch, res, column)
        if on_batch is not None:
            on_batch(batch, res)
    return out


def _record(
    out: BacktestResult, batch: ReadingBatch, res: ProcessResult, column: dict[int, int]
) -> None:
    """Write a processed batch's results into the rows its readings came from."""
    src = batch.src_index
    out.score[src] = res.score
    out.severity[src] = res.severity
    out.expected[src] = res.expected
    if len(res.forecasts):
        rows = src[res.forecast_rows]
        cols = np.fromiter((column[h] for h in res.forecasts.horizon_s.tolist()), np.int64)
        for q, name in enumerate(("p10", "p50", "p90")):
            out.quantiles[q, rows, cols] = getattr(res.forecasts, name)
    for r in res.rejections:  # their src_index is already the row number
        out.dead_letter[r.src_index] = r.error_class
        out.dead_letter_error[r.src_index] = r.error
    out.counters["dead_letters"] += len(res.rejections)
    out.counters.update(res.counters)
    out.events.extend(res.anomalies)
    out.batches += 1


def _arrival_batches(readings: ReadingBatch, batch_size: int) -> list[np.ndarray]:
    """The order readings are fed in, cut into batches: by time across entities, by file order
    within one entity.

    Each reading's sort key is the running maximum of its entity's timestamps in file order, so
    a reading that goes back in time stays right after its predecessor (and is rejected as out of
    order, as it would be live) instead of being sorted into place.
    """
    key = entity_key(readings.kind, readings.entity)
    ts = pd.Series(readings.ts_ms)
    running_max = ts.groupby(pd.Series(key)).cummax().to_numpy()
    order = np.lexsort((readings.src_index, running_max))
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


# -- the file edge: rows to records, results to columns ---------------------------------------
def contract_of(columns: Sequence[str]) -> str:
    """``meter`` for files with ``meter_id``, ``scada`` for files with ``asset_id``."""
    if "meter_id" in columns:
        return METER
    if "asset_id" in columns:
        return SCADA
    raise BacktestInputError(
        f"input needs a meter_id column (meter readings) or an asset_id column (SCADA readings); "
        f"it has {list(columns)[:12]}"
    )


def encode_rows(frame: pd.DataFrame) -> tuple[list[bytes], str]:
    """The JSON record a producer would send for each row, and the file's contract.

    Empty cells are left out of the record; a number column's cell that is not a finite number
    is sent as the text it holds, so the decoder rejects it with the contract's reason.
    """
    contract = contract_of(frame.columns)
    absent = [c for c in _REQUIRED[contract] if c not in frame.columns]
    if absent:
        raise BacktestInputError(f"input lacks the required column(s) {', '.join(absent)}")
    fields: list[tuple[str, list[object]]] = []
    for name in frame.columns:
        col = frame[name]
        if name in _TEXT[contract]:
            fields.append((name, _text_cells(col)))
        elif name in _NUMBERS[contract]:
            fields.append((name, _number_cells(col)))
        elif name == "ts":
            fields.append((name, _ts_cells(col)))
    names = [f for f, _ in fields]
    dumps, missing = orjson.dumps, _MISSING
    values = [
        dumps({k: v for k, v in zip(names, cells, strict=True) if v is not missing})
        for cells in zip(*(c for _, c in fields), strict=True)
    ]
    return values, contract


def _text_cells(col: pd.Series) -> list[object]:
    return [
        _MISSING if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else str(v)
        for v in col.tolist()
    ]


def _number_cells(col: pd.Series) -> list[object]:
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return [
            _MISSING if pd.isna(v) else (v if math.isfinite(v) else str(v)) for v in col.tolist()
        ]
    out: list[object] = []
    for v in col.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            out.append(_MISSING)
            continue
        text = str(v)
        number = float(text) if _NUMBER_RE.fullmatch(text) else math.nan
        out.append(number if math.isfinite(number) else text)
    return out


def _ts_cells(col: pd.Series) -> list[object]:
    """Epoch ms as a number, RFC 3339 as text (the decoder applies the contract's rule)."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        ms = col.dt.tz_convert("UTC").astype("datetime64[ms, UTC]").astype("int64").tolist()
        return [_MISSING if pd.isna(t) else m for t, m in zip(col.tolist(), ms, strict=True)]
    if pd.api.types.is_datetime64_dtype(col.dtype):  # naive: sent as text without an offset
        return [_MISSING if pd.isna(t) else t.isoformat() for t in col.tolist()]
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return [_MISSING if pd.isna(v) else v for v in col.tolist()]
    out: list[object] = []
    for v in col.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            out.append(_MISSING)
        elif isinstance(v, str) and _NUMBER_RE.fullmatch(v):
            number = float(v)
            out.append(int(v) if number.is_integer() and v.strip().isdigit() else number)
        else:
            out.append(v if isinstance(v, str) else str(v))
    return out


def result_columns(frame: pd.DataFrame, result: BacktestResult, id_column: str) -> pd.DataFrame:
    """The output table: id, ts as given, score, severity, forecasts, expectation, dead letter."""
    n = len(result)
    sev = np.array(("",) + SEVERITIES, dtype=object)[result.severity + 1]
    data: dict[str, object] = {
        id_column: frame[id_column].to_numpy() if id_column in frame else np.full(n, None),
        "ts": frame["ts"].to_numpy(),
        "anomaly_score": result.score,
        "severity": sev,
    }
    for k, h in enumerate(result.horizons_s):
        for q, name in enumerate(("p10", "p50", "p90")):
            data[f"{name}_{h}s"] = result.quantiles[q, :, k]
    data["expected"] = result.expected
    data["dead_letter"] = result.dead_letter
    data["dead_letter_error"] = result.dead_letter_error
    return pd.DataFrame(data)


def reading_batches(frame: pd.DataFrame, batch_size: int = DEFAULT_BATCH_SIZE
                    ) -> tuple[list[ReadingBatch], int]:
    """The valid readings of a table, in the order and batches a backtest feeds them, and the
    number of rows the decoder rejected (for training: the same path as live and backtest)."""
    values, contract = encode_rows(frame)
    decoded = decode_batch(
        values, [contract] * len(values), now_ms=MAX_TS_MS,
        max_age_ms=MAX_TS_MS - MIN_TS_MS, max_future_ms=0,
    )
    readings = decoded.readings
    if len(readings) == 0:
        return [], len(decoded.rejections)
    return ([readings.take(order) for order in _arrival_batches(readings, batch_size)],
            len(decoded.rejections))


def backtest_frame(
    frame: pd.DataFrame,
    params: ProcessorParams | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ensemble: NowcastEnsemble | None = None,
    on_batch: Callable[[ReadingBatch, ProcessResult], None] | None = None,
    partitions: int = 1,
) -> tuple[pd.DataFrame, BacktestResult]:
    """Backtest the rows of a table of readings; returns the output table and the raw result."""
    values, contract = encode_rows(frame)
    result = backtest_values(values, [contract] * len(values), params, batch_size,
                             on_batch=on_batch, ensemble=ensemble, partitions=partitions)
    id_column = "meter_id" if contract == METER else "asset_id"
    return result_columns(frame, result, id_column), result


def read_input(path: Path) -> pd.DataFrame:
    """A CSV (every cell read as text, as a producer would see it) or a Parquet file."""
    try:
        with path.open("rb") as f:
            parquet = f.read(4) == b"PAR1"
        if parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise BacktestInputError(f"input file {path} does not exist") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BacktestInputError(f"cannot read {path}: {exc}") from None


def write_output(table: pd.DataFrame, path: Path) -> None:
    """CSV (empty cells for missing values), or Parquet if the name ends in .parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False, na_rep="")


def backtest_file(
    input_path: Path,
    output_path: Path,
    params: ProcessorParams | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ensemble: NowcastEnsemble | None = None,
    on_batch: Callable[[ReadingBatch, ProcessResult], None] | None = None,
    partitions: int = 1,
) -> BacktestResult:
    table, result = backtest_frame(
        read_input(input_path), params, batch_size, ensemble, on_batch, partitions
    )
    write_output(table, output_path)
    return result
