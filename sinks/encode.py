"""Encode outputs as Kafka records: JSON values, entity keys, headers a subscriber can filter on.

Headers on every record: ``content-type`` (application/json), ``schema-version``, ``record-type``;
anomalies add ``severity`` so an alerting consumer can skip info events without parsing payloads.
Dead letters keep the original value bytes and key unchanged, so they can be re-produced, and carry
their context in the headers a Kafka Connect dead-letter queue uses (``__connect.errors.topic``,
``.partition``, ``.offset``, ``.connector.name``, ``.exception.class.name`` = the reason,
``.exception.message``), so tools built for Connect DLQs read them; the one fact Connect has no
header for is ``gridstream.dead_lettered_at``.
"""

from __future__ import annotations

from functools import partial
from itertools import repeat
from typing import NamedTuple

import numpy as np
import orjson

from schemas import SCHEMA_VERSION
from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch, unit_of

Headers = list[tuple[str, bytes]]

_JSON = ("content-type", b"application/json")
_VERSION = ("schema-version", SCHEMA_VERSION.encode())
_CONNECTOR = ("__connect.errors.connector.name", b"gridstream")
FORECAST_HEADERS: Headers = [_JSON, _VERSION, ("record-type", b"forecast")]
_ANOMALY_BASE: Headers = [_JSON, _VERSION, ("record-type", b"anomaly")]
SEVERITY_HEADERS: dict[str, Headers] = {
    sev: [*_ANOMALY_BASE, ("severity", sev.encode())] for sev in ("info", "warning", "critical")
}


class OutRecord(NamedTuple):
    """One record for a topic, ready to produce (a tuple: a frozen dataclass costs ~2 µs each)."""

    key: bytes | None
    value: bytes
    headers: Headers


# OutRecord from a (key, value, headers) tuple without the Python-level __new__ (0.25 -> 0.12 µs)
_out_record = partial(tuple.__new__, OutRecord)


def rfc3339_ms(ts_ms: np.ndarray) -> np.ndarray:
    """Vectorised epoch ms -> '2024-05-01T12:00:00.000Z' strings.

    Formats each distinct time once (readings of many meters share their interval times, and
    every horizon of a reading shares its issue time) and appends the "Z" by copying characters
    into a wider array: ``np.char.add`` cost 0.5 µs per string, more than the formatting.
    """
    uniq, inverse = np.unique(np.asarray(ts_ms, dtype=np.int64), return_inverse=True)
    text = np.datetime_as_string(uniq.astype("datetime64[ms]"), unit="ms")
    lengths = np.char.str_len(text)
    if len(uniq) == 0 or lengths.min() != lengths.max():  # mixed widths: the plain way
        return np.char.add(text.astype(str), "Z")[inverse]
    width = int(lengths[0])
    out = np.empty(len(uniq), dtype=f"<U{width + 1}")
    chars = out.view("<U1").reshape(len(uniq), width + 1)
    chars[:, :width] = text.astype(f"<U{width}").view("<U1").reshape(len(uniq), width)
    chars[:, width] = "Z"
    return out[inverse]


def iso_ms(ts_ms: int) -> str:
    return str(np.datetime_as_string(np.datetime64(int(ts_ms), "ms"), unit="ms")) + "Z"


def encode_forecasts(batch: ForecastBatch) -> list[OutRecord]:
    """One JSON record per (reading, horizon), keyed by entity id."""
    n = len(batch)
    if n == 0:
        return []
    issued = rfc3339_ms(batch.issued_ms).tolist()
    target = rfc3339_ms(batch.target_ms).tolist()
    entity = batch.entity.tolist()
    kind = batch.kind.tolist()
    horizon = batch.horizon_s.tolist()
    p10 = batch.p10.tolist()
    p50 = batch.p50.tolist()
    p90 = batch.p90.tolist()
    model = batch.model
    units = {k: unit_of(k) for k in set(kind)}
    docs = [
        {
            "entity_id": entity[i],
            "entity_kind": kind[i],
            "issued_at": issued[i],
            "horizon_s": horizon[i],
            "target_ts": target[i],
            "p10": p10[i],
            "p50": p50[i],
            "p90": p90[i],
            "unit": units[kind[i]],
            "model": model,
        }
        for i in range(n)
    ]
    values = _dump_each(docs, b'{"entity_id":')
    keys = [e.encode() for e in entity]
    return list(map(_out_record, zip(keys, values, repeat(FORECAST_HEADERS))))


def _dump_each(docs: list[dict[str, object]], head: bytes) -> list[bytes]:
    """``[orjson.dumps(d) for d in docs]``, computed as one dump split at record boundaries.

    One call for the whole list is ~10x cheaper than one per record (allocation dominates).
    Every document starts with the same first key, and a JSON string cannot hold an unescaped
    quote, so ``,`` + ``head`` occurs only between records; the count is checked regardless.
    """
    if not docs:
        return []
    parts = orjson.dumps(docs)[1:-1].split(b"," + head)
    if len(parts) != len(docs):  # cannot happen with well-formed documents; stay correct anyway
        return [orjson.dumps(d) for d in docs]
    return [parts[0], *(head + p for p in parts[1:])]


def anomaly_json(event: AnomalyRecord) -> dict[str, object]:
    """The event in its published JSON shape (``schemas.outputs.AnomalyEvent``)."""
    reading = dict(event.reading)
    if isinstance(reading.get("ts"), int):
        reading["ts"] = iso_ms(int(reading["ts"]))  # type: ignore[arg-type]
    return {
        "event_id": event.event_id,
        "entity_id": event.entity_id,
        "entity_kind": event.entity_kind,
        "ts": iso_ms(event.ts_ms),
        "score": event.score,
        "severity": event.severity,
        "detectors": event.detectors,
        "fired": event.fired,
        "explanation": event.explanation,
        "reading": reading,
        "model_versions": event.model_versions,
        "detected_at": iso_ms(event.detected_ms),
    }


def encode_anomalies(events: list[AnomalyRecord]) -> list[OutRecord]:
    return [
        OutRecord(
            ev.entity_id.encode(), orjson.dumps(anomaly_json(ev)), SEVERITY_HEADERS[ev.severity]
        )
        for ev in events
    ]


def encode_dead_letters(letters: list[DeadLetterRecord]) -> list[OutRecord]:
    out = []
    for dl in letters:
        headers: Headers = [
            ("__connect.errors.topic", dl.source_topic.encode()),
            ("__connect.errors.partition", str(dl.source_partition).encode()),
            ("__connect.errors.offset", str(dl.source_offset).encode()),
            _CONNECTOR,
            ("__connect.errors.exception.class.name", dl.error_class.encode()),
            ("__connect.errors.exception.message", dl.error.encode(errors="replace")[:1024]),
            ("gridstream.dead_lettered_at", iso_ms(dl.dead_lettered_ms).encode()),
            _VERSION,
        ]
        out.append(OutRecord(dl.key, dl.raw, headers))
    return out
