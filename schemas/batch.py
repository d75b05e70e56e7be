"""Column batches: the struct-of-arrays form every stage of the core works on.

One ``ReadingBatch`` holds the valid readings of one consumed batch, in arrival order, with meter
and SCADA readings side by side: ``value`` is the active-power channel (kW for meters, MW for
SCADA assets) and the other channels are NaN where a reading did not carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Optional channels, in the order the core's feature code expects them.
CHANNELS: tuple[str, ...] = ("reactive", "voltage", "current", "frequency", "temperature")


ENTITY_KEY_SEP = "\x1f"  # a control character: ids may not contain it (schemas.readings)


def entity_key(kind: np.ndarray | str, entity: np.ndarray | str) -> np.ndarray | str:
    r"""The key that tells entities apart across kinds (a meter and a feeder may share an id):
    ``kind + "\x1f" + id``, for one entity or element-wise for arrays of them.

    >>> entity_key("meter", "m-1")
    'meter\x1fm-1'
    """
    return kind + ENTITY_KEY_SEP + entity  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """Valid readings of one batch; every array has the same length."""

    entity: np.ndarray  # object: entity id (meter_id or asset_id)
    kind: np.ndarray  # object: "meter" or the SCADA asset kind
    ts_ms: np.ndarray  # int64: reading time, epoch ms UTC
    value: np.ndarray  # float64: active power (kW meters, MW SCADA)
    reactive: np.ndarray  # float64: kvar / Mvar, NaN if absent
    voltage: np.ndarray  # float64: V (meters) / kV (SCADA), NaN if absent
    current: np.ndarray  # float64: A, NaN if absent
    frequency: np.ndarray  # float64: Hz, NaN if absent
    temperature: np.ndarray  # float64: °C, NaN if absent
    quality: np.ndarray  # object: quality flag or None
    src_index: np.ndarray  # int64: position of the record in the consumed batch

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])

    def take(self, index: np.ndarray) -> ReadingBatch:
        """A new batch with the rows selected by an index array or boolean mask."""
        return ReadingBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def empty() -> ReadingBatch:
        obj = np.empty(0, dtype=object)
        flt = np.empty(0, dtype=np.float64)
        return ReadingBatch(
            entity=obj,
            kind=obj,
            ts_ms=np.empty(0, dtype=np.int64),
            value=flt,
            reactive=flt,
            voltage=flt,
            current=flt,
            frequency=flt,
            temperature=flt,
            quality=obj,
            src_index=np.empty(0, dtype=np.int64),
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one consumed record did not become a reading (becomes a dead letter)."""

    src_index: int
    error_class: str
    error: str


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The outcome of decoding a consumed batch: valid readings plus rejections.

    ``len(readings) + len(rejections)`` always equals the number of records given.
    """

    readings: ReadingBatch
    rejections: list[Rejection]


@dataclass(frozen=True, slots=True)
class ForecastBatch:
    """Forecasts issued from one batch: one row per (reading, horizon)."""

    entity: np.ndarray  # object
    kind: np.ndarray  # object
    issued_ms: np.ndarray  # int64: ts of the reading the forecast was issued from
    horizon_s: np.ndarray  # int64
    target_ms: np.ndarray  # int64: issued_ms + horizon_s * 1000
    p10: np.ndarray  # float64
    p50: np.ndarray  # float64
    p90: np.ndarray  # float64
    model: str  # name@version, the same for the whole batch

    def __len__(self) -> int:
        return int(self.issued_ms.shape[0])

    @staticmethod
    def empty(model: str = "") -> ForecastBatch:
        obj = np.empty(0, dtype=object)
        i64 = np.empty(0, dtype=np.int64)
        f64 = np.empty(0, dtype=np.float64)
        return ForecastBatch(obj, obj, i64, i64, i64, f64, f64, f64, model)


def unit_of(kind: str) -> str:
    """Unit of the active-power channel: meters report kW, SCADA assets MW."""
    return "kW" if kind == "meter" else "MW"


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    """One anomaly event (see ``schemas.outputs.AnomalyEvent``), with times as epoch ms."""

    event_id: str
    entity_id: str
    entity_kind: str
    ts_ms: int
    score: float
    severity: str
    detectors: dict[str, float]
    fired: list[str]
    explanation: list[dict[str, float | str | None]]  # feature, value, expected, deviation
    reading: dict[str, float | str | None]
    model_versions: dict[str, str]
    detected_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record that could not be processed (see ``schemas.outputs.DeadLetter``)."""

    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    raw: bytes
    error_class: str
    error: str
    dead_lettered_ms: int


@dataclass(frozen=True, slots=True)
class DriftEventRecord:
    """A drift detector fired: the data or the models' fit to it changed (``drift_events``)."""

    entity_id: str  # "*" for a fleet-level event of one entity kind
    entity_kind: str
    ts_ms: int
    detector: str
    statistic: float
    detail: dict[str, object]
    detected_ms: int
