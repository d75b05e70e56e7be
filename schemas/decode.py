"""Decode and validate a whole consumed batch into columns, rejecting bad records with a reason.

The fast path does one ``orjson.loads`` and a few type checks per record (an id's pattern once per
batch, absent optional fields without a call), keeps one tuple per valid record and transposes them
into columns at the end, then checks bounds and timestamps on numpy columns. Only a record the
fast path rejects is run through the pydantic contract, to name exactly what is wrong; a test keeps
both paths in agreement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from schemas.batch import DecodedBatch, ReadingBatch, Rejection
from schemas.bounds import (
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    MAX_QUALITY_LENGTH,
    METER_BOUNDS,
    SCADA_BOUNDS,
    SCADA_KINDS,
)
from schemas.readings import (
    ID_CHAR_CLASS,
    MAX_TS_MS,
    MIN_TS_MS,
    MeterReading,
    ScadaReading,
    epoch_ms,
)

METER = "meter"
SCADA = "scada"

_ID_RE = re.compile(f"{ID_CHAR_CLASS}{{1,{MAX_ID_LENGTH}}}")
_SCADA_KINDS = frozenset(SCADA_KINDS)
_NUM = (int, float)
_NAN = math.nan

# Per contract: id field, active-power field, optional channels in batch order
# (reactive, voltage, current, frequency, temperature); None where the contract has no such channel.
_FIELDS: dict[str, tuple[str, str, tuple[str | None, ...]]] = {
    METER: ("meter_id", "kw", ("kvar", "voltage_v", "current_a", None, None)),
    SCADA: (
        "asset_id",
        "p_mw",
        ("q_mvar", "voltage_kv", "current_a", "frequency_hz", "temperature_c"),
    ),
}
_BOUNDS = {METER: METER_BOUNDS, SCADA: SCADA_BOUNDS}
_MODELS: dict[str, type[BaseModel]] = {METER: MeterReading, SCADA: ScadaReading}


class _Invalid(Exception):
    """Raised inside the fast path; the caller asks pydantic for the precise reason."""


def _ts_ms(value: object, cache: dict[str, int]) -> int:
    """Epoch ms by the contract's rule (``readings.epoch_ms``); the common cases are inlined."""
    kind = type(value)
    if kind is int and MIN_TS_MS <= value <= MAX_TS_MS:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    if kind is str:
        hit = cache.get(value)  # type: ignore[arg-type]
        if hit is not None:
            return hit
    try:
        ms = epoch_ms(value)
    except ValueError:  # includes pydantic_core.PydanticCustomError
        raise _Invalid from None
    if kind is str:
        cache[value] = ms  # type: ignore[index]
    return ms


def _opt(value: object) -> float:
    if value is None:
        return _NAN
    if type(value) in _NUM:
        return value  # type: ignore[return-value]
    raise _Invalid


def _explain(contract: str, obj: dict) -> tuple[str, str]:
    """Ask the pydantic contract what is wrong with a record the fast path rejected."""
    try:
        _MODELS[contract].model_validate(obj)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "<record>"
        etype = err["type"]
        if etype == "missing":
            error_class = "missing_field"
        elif etype == "finite_number":
            error_class = "not_finite"
        elif etype in ("greater_than_equal", "less_than_equal"):
            error_class = "out_of_range"
        elif etype.endswith("_type") or etype in ("dict_type", "model_type"):
            error_class = "invalid_type"
        else:
            error_class = "invalid_value"
        shown = repr(err.get("input"))[:60]
        return error_class, f"{field}: {err['msg']} (got {shown})"
    except Exception as exc:  # a poison record must never crash the consumer loop
        # A validator bug, not a record property: dead-letter the record with the evidence.
        return "invalid_value", f"contract raised {type(exc).__name__}: {str(exc)[:120]}"
    # The contract accepts what the fast path refused: a disagreement between the two validators.
    return "invalid_value", "record rejected by the fast validator but not by the contract"


def decode_batch(
    values: Sequence[bytes | None],
    contracts: Sequence[str],
    *,
    now_ms: int,
    max_age_ms: int,
    max_future_ms: int,
) -> DecodedBatch:
    """Decode raw Kafka values into a ``ReadingBatch``; every record is accepted or rejected.

    ``contracts[i]`` names the contract (``"meter"`` or ``"scada"``) of ``values[i]``, normally
    given by its topic. Timestamps outside ``[now - max_age, now + max_future]`` are rejected.
    """
    n = len(values)
    if len(contracts) != n:
        raise ValueError(f"{len(contracts)} contracts for {n} values")
    unknown = set(contracts) - _FIELDS.keys()
    if unknown:
        raise ValueError(f"unknown contracts {sorted(map(repr, unknown))}; expected meter or scada")
    rows: list[tuple] = []  # one tuple per valid record, transposed once at the end
    append = rows.append
    rejections: list[Rejection] = []
    reject = rejections.append
    ts_cache: dict[str, int] = {}
    valid_ids: set[str] = set()  # ids of this batch that passed the pattern already
    loads = orjson.loads
    id_match = _ID_RE.fullmatch

    for i in range(n):
        raw = values[i]
        contract = contracts[i]
        if raw is None or len(raw) > MAX_MESSAGE_BYTES:
            if raw is None:
                reject(Rejection(i, "malformed_json", "record has no value (tombstone)"))
            else:
                size = f"{len(raw)} bytes, more than {MAX_MESSAGE_BYTES}"
                reject(Rejection(i, "oversized", size))
            continue
        try:
            obj = loads(raw)
        except orjson.JSONDecodeError as exc:
            reject(Rejection(i, "malformed_json", str(exc)[:200]))
            continue
        if type(obj) is not dict:
            reject(Rejection(i, "not_an_object", f"JSON {type(obj).__name__}"))
            continue
        id_field, value_field, (f0, f1, f2, f3, f4) = _FIELDS[contract]
        try:
            eid = obj.get(id_field)
            if type(eid) is not str:
                raise _Invalid
            if eid not in valid_ids:
                if id_match(eid) is None:
                    raise _Invalid
                valid_ids.add(eid)
            if contract == METER:
                ekind = METER
            else:
                ekind = obj.get("asset_kind")
                if type(ekind) is not str or ekind not in _SCADA_KINDS:
                    raise _Invalid
            t = _ts_ms(obj.get("ts"), ts_cache)
            v = obj.get(value_field)
            if type(v) not in _NUM:
                raise _Invalid
            # absent optional channels are the common case: no call for them
            c0 = _NAN if f0 is None or (x := obj.get(f0)) is None else _opt(x)
            c1 = _NAN if f1 is None or (x := obj.get(f1)) is None else _opt(x)
            c2 = _NAN if f2 is None or (x := obj.get(f2)) is None else _opt(x)
            c3 = _NAN if f3 is None or (x := obj.get(f3)) is None else _opt(x)
            c4 = _NAN if f4 is None or (x := obj.get(f4)) is None else _opt(x)
            q = obj.get("quality")
            if q is not None and (type(q) is not str or len(q) > MAX_QUALITY_LENGTH):
                raise _Invalid
        except _Invalid:
            error_class, error = _explain(contract, obj)
            reject(Rejection(i, error_class, error))
            continue
        append((eid, ekind, t, v, c0, c1, c2, c3, c4, q, i))

    batch = _columns(rows)
    batch, late = _check_ranges(batch, now_ms, max_age_ms, max_future_ms)
    rejections.extend(late)
    rejections.sort(key=lambda r: r.src_index)
    return DecodedBatch(batch, rejections)


def _columns(rows: list[tuple]) -> ReadingBatch:
    """Transpose the per-record tuples into the batch's columns (one C-level pass per column)."""
    if not rows:
        return ReadingBatch.empty()
    entity, kind, ts, val, c0, c1, c2, c3, c4, quality, src = zip(*rows, strict=True)

    def f64(xs: tuple) -> np.ndarray:
        return np.array(xs, dtype=np.float64)

    def obj(xs: tuple) -> np.ndarray:
        out = np.empty(len(xs), dtype=object)
        out[:] = xs
        return out

    return ReadingBatch(
        entity=obj(entity),
        kind=obj(kind),
        ts_ms=np.array(ts, dtype=np.int64),  # within MIN_TS_MS..MAX_TS_MS, so int64 holds it
        value=f64(val),
        reactive=f64(c0),
        voltage=f64(c1),
        current=f64(c2),
        frequency=f64(c3),
        temperature=f64(c4),
        quality=obj(quality),
        src_index=np.array(src, dtype=np.int64),
    )


_RANGE_CHECKS: dict[str, tuple[tuple[str, str], ...]] = {
    # batch column -> contract field, per contract
    METER: (
        ("value", "kw"),
        ("reactive", "kvar"),
        ("voltage", "voltage_v"),
        ("current", "current_a"),
    ),
    SCADA: (
        ("value", "p_mw"),
        ("reactive", "q_mvar"),
        ("voltage", "voltage_kv"),
        ("current", "current_a"),
        ("frequency", "frequency_hz"),
        ("temperature", "temperature_c"),
    ),
}


def _check_ranges(
    batch: ReadingBatch,
    now_ms: int,
    max_age_ms: int,
    max_future_ms: int,
) -> tuple[ReadingBatch, list[Rejection]]:
    """Vectorised bounds and time-window checks; returns the survivors and the rejections."""
    n = len(batch)
    if n == 0:
        return batch, []
    bad = np.zeros(n, dtype=bool)
    reasons: dict[int, tuple[str, str]] = {}
    is_meter = batch.kind == METER
    for contract, checks in _RANGE_CHECKS.items():
        rows = is_meter if contract == METER else ~is_meter
        if not rows.any():
            continue
        bounds = _BOUNDS[contract]
        for column, field in checks:
            col = getattr(batch, column)
            low, high = bounds[field]
            with np.errstate(invalid="ignore"):
                out = rows & ~np.isnan(col) & ((col < low) | (col > high))
            for j in np.flatnonzero(out & ~bad):
                reasons[j] = ("out_of_range", f"{field}: {float(col[j])!r} outside [{low}, {high}]")
            bad |= out
    too_old = batch.ts_ms < now_ms - max_age_ms
    in_future = batch.ts_ms > now_ms + max_future_ms
    for j in np.flatnonzero(too_old & ~bad):
        reasons[j] = ("timestamp_too_old", f"ts: {int(batch.ts_ms[j])} ms is older than allowed")
    bad |= too_old
    for j in np.flatnonzero(in_future & ~bad):
        reasons[j] = ("timestamp_in_future", f"ts: {int(batch.ts_ms[j])} ms is in the future")
    bad |= in_future
    if not bad.any():
        return batch, []
    rejected = [
        Rejection(int(batch.src_index[j]), reasons[j][0], reasons[j][1])
        for j in np.flatnonzero(bad)
    ]
    return batch.take(~bad), rejected
