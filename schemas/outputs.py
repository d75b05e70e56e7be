"""Output contracts: forecasts, anomaly events and dead letters.

Topic records are JSON with key = entity id and headers ``content-type`` and ``schema-version``.
Ids are deterministic (a hash of what the record is about), so a subscriber or ClickHouse can
drop a redelivered copy.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import AwareDatetime, Base64Bytes, BaseModel, ConfigDict, Field

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")


def stable_id(*parts: object) -> str:
    """A 32-hex-digit id that is the same every time the same parts are hashed."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16)
    return digest.hexdigest()


class Forecast(BaseModel):
    """A nowcast of an entity's active power ``horizon_s`` seconds after ``issued_at``.

    Its natural key is (entity_kind, entity_id, issued_at, horizon_s): a redelivered forecast has
    the same key, and ClickHouse keeps one row per key.
    """

    model_config = ConfigDict(frozen=True, title="Forecast")

    entity_id: str
    entity_kind: str
    issued_at: AwareDatetime = Field(description="timestamp of the reading it was issued from")
    horizon_s: int = Field(gt=0)
    target_ts: AwareDatetime
    p10: float
    p50: float
    p90: float
    unit: Literal["kW", "MW"]
    model: str = Field(description="name@version of the model that made it")


class FeatureExplanation(BaseModel):
    """Why a reading looks anomalous: one feature, what was expected, how far off it is."""

    model_config = ConfigDict(frozen=True)

    feature: str
    value: float | None
    expected: float | None
    deviation: float = Field(description="standardised deviation (robust z-score or equivalent)")


class AnomalyEvent(BaseModel):
    """A reading scored as anomalous. One incident (readings above threshold with gaps shorter
    than the cooldown) yields one event, and another only if its severity rises."""

    model_config = ConfigDict(frozen=True, title="AnomalyEvent")

    event_id: str = Field(description="stable id of (entity kind, entity id, ts)")
    entity_id: str
    entity_kind: str
    ts: AwareDatetime
    score: float = Field(ge=0.0, le=1.0, description="fused anomaly score")
    severity: Literal["info", "warning", "critical"]
    detectors: dict[str, float] = Field(description="each detector's score in [0, 1]")
    fired: list[str] = Field(description="detectors whose own score passed their threshold")
    explanation: list[FeatureExplanation]
    reading: dict[str, float | str | None] = Field(description="the reading's fields")
    model_versions: dict[str, str]
    detected_at: AwareDatetime = Field(description="processing time of the event")


ErrorClass = Literal[
    "oversized",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "invalid_type",
    "invalid_value",
    "not_finite",
    "out_of_range",
    "timestamp_too_old",
    "timestamp_in_future",
    "out_of_order",
    "conflicting_duplicate",
    "key_mismatch",
    "schema_registry_not_configured",
    "unknown_schema_id",
    "unexpected_framing",
    "not_framed",
    "wrong_schema_type",
    "schema_decode_failed",
    "topology_invalid",
    "topology_tombstone",
    "topology_unknown_parent",
    "topology_cycle",
    "topology_two_parents",
]


class DeadLetter(BaseModel):
    """A record that was read but could not be processed, with the reason and where it came from.

    On the dead-letter topic the Kafka value is the original bytes verbatim and these fields
    travel as Kafka Connect dead-letter headers (``__connect.errors.*``), so a record can be
    re-produced unchanged after a fix.
    In ClickHouse they are columns of ``dead_letters``.
    """

    model_config = ConfigDict(frozen=True, title="DeadLetter")

    source_topic: str
    source_partition: int
    source_offset: int
    key: Base64Bytes | None = Field(description="the original key bytes, base64 in JSON")
    raw: Base64Bytes = Field(description="the original value bytes, unchanged; base64 in JSON")
    error_class: ErrorClass
    error: str = Field(description="what was wrong and where (field, value)")
    dead_lettered_at: AwareDatetime


class LabelledAnomaly(BaseModel):
    """An anomaly the simulator injected, for scoring detection."""

    model_config = ConfigDict(frozen=True, title="LabelledAnomaly")

    entity_id: str
    entity_kind: str
    kind: Literal["spike", "drop_to_zero", "stuck", "drift", "voltage_sag", "step_change"]
    start_ts: AwareDatetime
    end_ts: AwareDatetime
