"""Input contracts: meter and SCADA readings (JSON, Kafka key = entity id).

These models are the reference definition and the source of the JSON Schema files that producers
use. The hot path validates whole batches with ``schemas.decode`` instead, which applies the same
rules column by column; a test keeps the two in agreement.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from schemas.bounds import MAX_ID_LENGTH, MAX_QUALITY_LENGTH, METER_BOUNDS, SCADA_BOUNDS

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
# The instants a ``datetime`` can hold (years 1..9999 UTC), in epoch ms. Anything outside is not a
# reading time but a unit mistake (epoch µs or ns), and cannot be turned into a datetime anyway.
MIN_TS_MS: Final = (datetime.min.replace(tzinfo=UTC) - EPOCH) // _MS
MAX_TS_MS: Final = (datetime.max.replace(tzinfo=UTC) - EPOCH) // _MS

# What an entity id may contain: anything but control characters (Unicode Cc: C0, DEL, C1),
# which break logs, Kafka keys and ClickHouse tooling. Shared with the fast decoder.
ID_CHAR_CLASS: Final = r"[^\x00-\x1f\x7f-\x9f]"


def _rfc3339(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 timestamp: {value[:40]!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError("RFC 3339 timestamp needs an offset (Z or +hh:mm)")
    return parsed


def epoch_ms(value: object) -> int:
    """The reading time as whole epoch milliseconds (floored), the resolution the pipeline keeps.

    The one definition of the ``ts`` rule, used by the model and by the fast decoder: RFC 3339 with
    an offset, or epoch ms as a JSON number (a fraction is floored), within years 1..9999 UTC.
    Integer arithmetic throughout, so ms values round-trip exactly.
    """
    if isinstance(value, str):
        ms = (_rfc3339(value) - EPOCH) // _MS
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError(
            "timestamp_type",
            "timestamp must be an RFC 3339 string or epoch milliseconds, not {kind}",
            {"kind": type(value).__name__},
        )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("epoch milliseconds must be finite")
        ms = math.floor(value)
    else:
        ms = value
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        shown = repr(value)[:40]
        raise ValueError(f"timestamp {shown} outside years 1..9999 (epoch ms expected, not µs/ns)")
    return ms


def parse_ts(value: object) -> datetime:
    """Accept RFC 3339 with an offset, or epoch milliseconds; always return UTC-aware."""
    ms = epoch_ms(value)
    if isinstance(value, str):  # keep the sub-millisecond digits the producer sent
        return _rfc3339(value).astimezone(UTC)
    return EPOCH + timedelta(milliseconds=ms)


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_ts),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time", "description": "RFC 3339 with offset"},
                {
                    "type": "number",
                    "minimum": MIN_TS_MS,
                    "exclusiveMaximum": MAX_TS_MS + 1,  # floored, so MAX_TS_MS + 0.9 is fine
                    "description": "epoch milliseconds (a fraction is floored to the millisecond)",
                },
            ]
        }
    ),
]
EntityId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=f"^{ID_CHAR_CLASS}+$"),
]
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
