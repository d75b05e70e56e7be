"""Input contracts: meter and SCADA readings (JSON, Kafka key = entity id).

These models are the reference definition and the source of the JSON Schema files that producers
use. The hot path validates whole batches with ``schemas.decode`` instead, which applies the same
rules column by column; a test keeps the two in agreement.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from schemas.bounds import MAX_ID_LENGTH, MAX_QUALITY_LENGTH, METER_BOUNDS, SCADA_BOUNDS


def parse_ts(value: object) -> datetime:
    """Accept RFC 3339 with an offset, or epoch milliseconds; always return UTC-aware."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be an RFC 3339 string or epoch milliseconds, not a bool")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("epoch milliseconds must be finite")
        try:
            return datetime.fromtimestamp(value / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"epoch milliseconds {value!r} out of range") from exc
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not an RFC 3339 timestamp: {value[:40]!r}") from exc
        if parsed.tzinfo is None:
            raise ValueError("RFC 3339 timestamp needs an offset (Z or +hh:mm)")
        return parsed.astimezone(UTC)
    raise ValueError("timestamp must be an RFC 3339 string or epoch milliseconds")


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_ts),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time", "description": "RFC 3339 with offset"},
                {"type": "integer", "description": "epoch milliseconds"},
            ]
        }
    ),
]
EntityId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f]+$")]
Quality = Annotated[str, Field(max_length=MAX_QUALITY_LENGTH)]
ScadaKind = Literal[
    "feeder", "transformer", "substation", "line", "generator", "storage", "solar", "wind", "other"
]


def _bounded(
    bounds: dict[str, tuple[float, float]], name: str, description: str, *, required: bool = False
) -> object:
    low, high = bounds[name]
    default = ... if required else None
    return Field(default, ge=low, le=high, allow_inf_nan=False, description=description)


class MeterReading(BaseModel):
    """One interval reading of an electricity meter."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, title="MeterReading")

    meter_id: EntityId
    ts: Timestamp
    kw: float = _bounded(METER_BOUNDS, "kw", "active power, kW (negative = export)", required=True)
    kvar: float | None = _bounded(METER_BOUNDS, "kvar", "reactive power, kvar")
    voltage_v: float | None = _bounded(METER_BOUNDS, "voltage_v", "voltage, V")
    current_a: float | None = _bounded(METER_BOUNDS, "current_a", "current, A")
    quality: Quality | None = None


class ScadaReading(BaseModel):
    """One SCADA sample of a grid asset (feeder, transformer, substation, ...)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, title="ScadaReading")

    asset_id: EntityId
    asset_kind: ScadaKind
    ts: Timestamp
    p_mw: float = _bounded(SCADA_BOUNDS, "p_mw", "active power, MW", required=True)
    q_mvar: float | None = _bounded(SCADA_BOUNDS, "q_mvar", "reactive power, Mvar")
    voltage_kv: float | None = _bounded(SCADA_BOUNDS, "voltage_kv", "voltage, kV")
    current_a: float | None = _bounded(SCADA_BOUNDS, "current_a", "current, A")
    frequency_hz: float | None = _bounded(SCADA_BOUNDS, "frequency_hz", "frequency, Hz")
    temperature_c: float | None = _bounded(SCADA_BOUNDS, "temperature_c", "temperature, °C")
    quality: Quality | None = None
