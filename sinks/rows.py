"""Outputs as Arrow tables shaped like the ClickHouse tables, and their deduplication tokens.

Readings and forecasts go from the batch's numpy columns straight to Arrow (no Python object per
row); anomalies, drift events and dead letters are rare and are converted per record.

What reaches the sink is stored, not judged: NaN/±inf as Float64 values (see ``sinks.ddl``), any
entity kind (a new SCADA asset kind needs no migration; its unit is MW like every non-meter), ids
and raw payloads of any length. The one cut: a dead letter's ``error`` text longer than
``MAX_ERROR_CHARS`` is shortened with a note saying how much was cut — the record itself is kept
whole in ``raw``, so nothing is lost, and a runaway message cannot bloat every row of a table
that analysts scan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import orjson
import pyarrow as pa

from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch, ReadingBatch, unit_of
from sinks.ddl import ANOMALIES, DEAD_LETTERS, DRIFT_EVENTS, FORECASTS, READINGS, Table

TS = pa.timestamp("ms", tz="UTC")
_STR = pa.string()
_F64 = pa.float64()
MAX_ERROR_CHARS = 8192

# The column of each table that says when gridstream wrote the row, left out of the token.
STAMP = {
    READINGS.name: "written_at",
    FORECASTS.name: "written_at",
    ANOMALIES.name: "detected_at",
    DRIFT_EVENTS.name: "detected_at",
    DEAD_LETTERS.name: "dead_lettered_at",
    "energy_balance": "written_at",
    "forecast_errors": "written_at",
}


class DriftEventLike(Protocol):
    """What a drift event needs to be written (the quality issue's record satisfies it)."""

    entity_id: str
    entity_kind: str
    ts_ms: int
    detector: str
    statistic: float
    detail: Mapping[str, object] | str
    detected_ms: int


def _table(spec: Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Columns in the table's order; a mismatch with the DDL is a bug caught here, not in SQL."""
    names = [c.name for c in spec.columns]
    if list(columns) != names:
        raise AssertionError(f"{spec.name}: columns {list(columns)} != {names}")
    return pa.table(columns)


def _units(kind: pa.Array) -> pa.Array:
    kinds = kind.dictionary_encode()  # unit_of once per distinct kind, not once per row
    unit = pa.array([unit_of(k) for k in kinds.dictionary.to_pylist()], type=_STR)
    return unit.take(kinds.indices)


def _ms(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64), type=TS)


def _f64(values: np.ndarray, *, nan_is_null: bool = False) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.float64), type=_F64, from_pandas=nan_is_null)


def readings_table(batch: ReadingBatch, now_ms: int) -> pa.Table:
    """The ``readings`` rows; absent optional channels (NaN in the batch) become NULL."""
    n = len(batch)
    kind = pa.array(batch.kind, type=_STR)
    channels = {
        name: _f64(getattr(batch, name), nan_is_null=True)
        for name in ("reactive", "voltage", "current", "frequency", "temperature")
    }
    return _table(
        READINGS,
        {
            "entity_id": pa.array(batch.entity, type=_STR),
            "entity_kind": kind,
            "ts": _ms(batch.ts_ms),
            "value": _f64(batch.value),
            "unit": _units(kind),
            **channels,
            "quality": pa.array(batch.quality, type=_STR),
            "written_at": pa.repeat(pa.scalar(now_ms, type=TS), n),
        },
    )


def forecasts_table(batch: ForecastBatch, now_ms: int) -> pa.Table:
    """The ``forecasts`` rows; NaN/inf quantiles are kept as values (see sinks.ddl)."""
    n = len(batch)
    kind = pa.array(batch.kind, type=_STR)
    return _table(
        FORECASTS,
        {
            "entity_id": pa.array(batch.entity, type=_STR),
            "entity_kind": kind,
            "issued_at": _ms(batch.issued_ms),
            "horizon_s": pa.array(np.asarray(batch.horizon_s, dtype=np.int64)).cast(pa.uint32()),
            "target_ts": _ms(batch.target_ms),
            "p10": _f64(batch.p10),
            "p50": _f64(batch.p50),
            "p90": _f64(batch.p90),
            "unit": _units(kind),
            "model": pa.repeat(pa.scalar(batch.model, type=_STR), n),
            "written_at": pa.repeat(pa.scalar(now_ms, type=TS), n),
        },
    )


def _json(value: object) -> str:
    # orjson writes NaN/inf as null: the JSON stays valid for ClickHouse's JSON functions.
    return orjson.dumps(value).decode()


def _times(values: list[int]) -> pa.Array:
    return pa.array(values, type=pa.int64()).cast(TS)


def anomalies_table(records: Sequence[AnomalyRecord]) -> pa.Table:
    """The ``anomalies`` rows; explanation and reading are JSON text."""
    return _table(
        ANOMALIES,
        {
            "event_id": pa.array([r.event_id for r in records], type=_STR),
            "entity_id": pa.array([r.entity_id for r in records], type=_STR),
            "entity_kind": pa.array([r.entity_kind for r in records], type=_STR),
            "ts": _times([r.ts_ms for r in records]),
            "score": pa.array([r.score for r in records], type=_F64),
            "severity": pa.array([r.severity for r in records], type=_STR),
            "detectors": pa.array(
                [list(r.detectors.items()) for r in records], type=pa.map_(_STR, _F64)
            ),
            "fired": pa.array([list(r.fired) for r in records], type=pa.list_(_STR)),
            "explanation": pa.array([_json(r.explanation) for r in records], type=_STR),
            "reading": pa.array([_json(r.reading) for r in records], type=_STR),
            "model_versions": pa.array(
                [list(r.model_versions.items()) for r in records], type=pa.map_(_STR, _STR)
            ),
            "detected_at": _times([r.detected_ms for r in records]),
        },
    )


def drift_events_table(records: Sequence[DriftEventLike]) -> pa.Table:
    """The ``drift_events`` rows; a mapping ``detail`` becomes JSON text."""
    return _table(
        DRIFT_EVENTS,
        {
            "entity_id": pa.array([r.entity_id for r in records], type=_STR),
            "entity_kind": pa.array([r.entity_kind for r in records], type=_STR),
            "ts": _times([r.ts_ms for r in records]),
            "detector": pa.array([r.detector for r in records], type=_STR),
            "statistic": pa.array([r.statistic for r in records], type=_F64),
            "detail": pa.array(
                [r.detail if isinstance(r.detail, str) else _json(r.detail) for r in records],
                type=_STR,
            ),
            "detected_at": _times([r.detected_ms for r in records]),
        },
    )


def shorten(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters with a note of how many were cut."""
    if len(text) <= limit:
        return text
    note = f" … [{len(text) - limit} more characters cut by gridstream]"
    return text[:limit] + note


def dead_letters_table(records: Sequence[DeadLetterRecord]) -> pa.Table:
    """The ``dead_letters`` rows; key and raw stay bytes (binary), whatever their encoding."""
    return _table(
        DEAD_LETTERS,
        {
            "source_topic": pa.array([r.source_topic for r in records], type=_STR),
            "source_partition": pa.array([r.source_partition for r in records], type=pa.int32()),
            "source_offset": pa.array([r.source_offset for r in records], type=pa.int64()),
            "key": pa.array([r.key for r in records], type=pa.binary()),
            "raw": pa.array([r.raw for r in records], type=pa.binary()),
            "error_class": pa.array([r.error_class for r in records], type=_STR),
            "error": pa.array([shorten(r.error) for r in records], type=_STR),
            "dead_lettered_at": _times([r.dead_lettered_ms for r in records]),
        },
    )


def dedup_token(table_name: str, rows: pa.Table) -> str:
    """The ``insert_deduplication_token`` of a batch: a hash of its rows without the stamp.

    The same rows written again — by a retry with the same stamp, or by a replay after a crash
    that stamps them later — get the same token, and the engine drops the second insert. Rows
    that differ in anything but the stamp (a recomputed forecast) get another token and are
    inserted; ReplacingMergeTree then keeps the newest.
    """
    content = rows.drop_columns([STAMP[table_name]])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, content.schema) as writer:
        writer.write_table(content)
    digest = hashlib.blake2b(sink.getvalue(), digest_size=16).hexdigest()
    return f"gs-{table_name}-{rows.num_rows}-{digest}"
