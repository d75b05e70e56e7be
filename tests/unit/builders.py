"""Builders of ``ReadingBatch`` objects for the core's unit tests (pure, seeded, no I/O).

``batch(rows)`` turns a few hand-written rows into a batch; ``daily_load`` makes days of
sinusoidal, noisy, interleaved telemetry for several entities, as a dict of columns that a test
can edit (inject an anomaly) before ``to_batch``; ``split``/``concat`` cut and join batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime

import numpy as np

from schemas.batch import CHANNELS, ReadingBatch

START_MS = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)  # 00:00 UTC
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
STEP_MS = 15 * MINUTE_MS
NOW_MS = START_MS + 400 * DAY_MS  # a fixed "detected at" clock: outputs must not depend on it


def batch(
    rows: Iterable[Sequence[object] | dict[str, object]], src_offset: int = 0
) -> ReadingBatch:
    """A batch from rows ``(entity, kind, ts_ms, value)`` or dicts with any column by name.

    Channels default to NaN, quality to None and ``src_index`` to ``src_offset + position``.
    """
    cols: dict[str, list[object]] = {f.name: [] for f in fields(ReadingBatch)}
    for i, row in enumerate(rows):
        rec: dict[str, object] = (
            dict(row)
            if isinstance(row, dict)
            else dict(zip(("entity", "kind", "ts_ms", "value"), row, strict=True))
        )
        rec.setdefault("kind", "meter")
        rec.setdefault("quality", None)
        rec.setdefault("src_index", src_offset + i)
        for ch in CHANNELS:
            rec.setdefault(ch, np.nan)
        unknown = set(rec) - set(cols)
        if unknown:
            raise KeyError(f"unknown batch columns {sorted(unknown)}")
        for name in cols:
            cols[name].append(rec[name])
    return to_batch(cols)


def to_batch(cols: dict[str, Sequence[object] | np.ndarray]) -> ReadingBatch:
    """A batch from full columns, with the dtypes the core expects."""
    obj = {"entity", "kind", "quality"}
    i64 = {"ts_ms", "src_index"}
    out: dict[str, np.ndarray] = {}
    for f in fields(ReadingBatch):
        values = cols[f.name]
        if f.name in obj:
            arr = np.empty(len(values), dtype=object)
            arr[:] = list(values)
        elif f.name in i64:
            arr = np.asarray(values, dtype=np.int64)
        else:
            arr = np.asarray(values, dtype=np.float64)
        out[f.name] = arr.copy()
    return ReadingBatch(**out)


def columns(b: ReadingBatch) -> dict[str, np.ndarray]:
    """Editable copies of every column of ``b``."""
    return {f.name: getattr(b, f.name).copy() for f in fields(ReadingBatch)}


def concat(batches: Sequence[ReadingBatch]) -> ReadingBatch:
    if not batches:
        return ReadingBatch.empty()
    return ReadingBatch(
        *(np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(ReadingBatch))
    )


def split(b: ReadingBatch, cuts: Sequence[int]) -> list[ReadingBatch]:
    """``b`` cut before every position in ``cuts`` (empty pieces kept: the core must take them)."""
    edges = [0, *cuts, len(b)]
    return [b.take(np.arange(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def one_by_one(b: ReadingBatch) -> list[ReadingBatch]:
    return [b.take(np.arange(i, i + 1)) for i in range(len(b))]


def daily_load(
    entities: Sequence[tuple[str, str]] = (("m1", "meter"), ("m2", "meter")),
    days: float = 4.0,
    step_ms: int = STEP_MS,
    start_ms: int = START_MS,
    noise: float = 0.03,
    seed: int = 7,
) -> dict[str, np.ndarray]:
    """Columns of time-ordered readings: at every step, one reading per entity.

    Meters: ~2 kW with a daily swing, 230 V; SCADA assets: ~5 MW, 11 kV, 50 Hz. Noise is a
    fraction of the mean; every entity has its own phase so that entities are not copies.
    """
    rng = np.random.default_rng(seed)
    steps = int(days * DAY_MS // step_ms)
    ts = start_ms + step_ms * np.arange(steps, dtype=np.int64)
    n_ent = len(entities)
    tod = (ts % DAY_MS) / DAY_MS
    ent_col, kind_col = [], []
    value = np.empty((steps, n_ent))
    voltage = np.empty((steps, n_ent))
    frequency = np.full((steps, n_ent), np.nan)
    for k, (entity, kind) in enumerate(entities):
        meter = kind == "meter"
        mean, v_nom = (2.0, 230.0) if meter else (5.0, 11.0)
        phase = 0.1 * k
        value[:, k] = mean * (1.0 + 0.4 * np.sin(2 * np.pi * (tod - 0.3 - phase)))
        value[:, k] += rng.normal(0.0, noise * mean, steps)
        voltage[:, k] = v_nom * (1.0 + rng.normal(0.0, 0.003, steps))
        if not meter:
            frequency[:, k] = 50.0 + rng.normal(0.0, 0.01, steps)
        ent_col.append(entity)
        kind_col.append(kind)
    n = steps * n_ent
    nan = np.full(n, np.nan)
    return {
        "entity": np.array(ent_col * steps, dtype=object),
        "kind": np.array(kind_col * steps, dtype=object),
        "ts_ms": np.repeat(ts, n_ent),
        "value": value.ravel(),
        "reactive": nan.copy(),
        "voltage": voltage.ravel(),
        "current": nan.copy(),
        "frequency": frequency.ravel(),
        "temperature": nan.copy(),
        "quality": np.array([None] * n, dtype=object),
        "src_index": np.arange(n, dtype=np.int64),
    }


def rows_of(cols: dict[str, np.ndarray], entity: str, kind: str | None = None) -> np.ndarray:
    """Positions of ``entity``'s rows (of ``kind`` if given), in time order."""
    mask = cols["entity"] == entity
    if kind is not None:
        mask &= cols["kind"] == kind
    return np.flatnonzero(mask)


def simulated_records(config: object, start_ms: int, hours: int) -> tuple[list[bytes], list[str]]:
    """Every record the telemetry simulator emits in ``hours`` from ``start_ms``, in emission
    order, with its contract (``config`` is a ``SimConfig``)."""
    from streams.sim.generator import TelemetrySimulator

    sim = TelemetrySimulator(config, start_ms)  # type: ignore[arg-type]
    values: list[bytes] = []
    contracts: list[str] = []
    for hour in range(1, hours + 1):
        step = sim.step_until(start_ms + hour * 3_600_000)
        values.extend(step.value)
        contracts.extend(step.contract)
    return values, contracts
