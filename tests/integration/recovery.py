"""Workloads and references for the restart, rebalance and crash tests.

The reference is what an uninterrupted processor makes of the same records: each partition's
records, in offset order, through one fresh core (the runner's own decode and core code). Since
the core's output does not depend on batch cuts, any run that restores state correctly after
crashes and moves publishes exactly these forecasts and events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import Message, Producer

from models.processor import GridProcessor
from schemas.decode import METER, decode_batch
from streams.config import Settings

STEP_MS = 900_000


def meter_workload(
    now_ms: int, meters: int = 12, steps: int = 150, bad_every: int = 97
) -> list[tuple[bytes, bytes]]:
    """``meters`` meters x ``steps`` readings, daily shape, a few spikes, and bad records."""
    start = now_ms - (steps + 2) * STEP_MS
    rng = np.random.default_rng(11)
    out: list[tuple[bytes, bytes]] = []
    for i in range(steps):
        hour = ((start + i * STEP_MS) // 3_600_000) % 24
        for m in range(meters):
            kw = 2.0 + m * 0.1 + np.sin((hour + m) / 24 * 2 * np.pi) + rng.normal(0, 0.05)
            if i in (60 + m, 120 + m) and m % 3 == 0:
                kw *= 7.0  # spikes: anomaly events to compare
            key = f"meter-{m:03d}".encode()
            out.append(
                (
                    key,
                    orjson.dumps(
                        {
                            "meter_id": key.decode(),
                            "ts": start + i * STEP_MS,
                            "kw": round(float(kw), 4),
                        }
                    ),
                )
            )
            if len(out) % bad_every == 0:
                out.append((key, b'{"meter_id": "' + key + b'", "kw": "oops"}'))
    return out


def produce_tracked(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Produce in order; returns each record's (partition, offset)."""
    coords: list[tuple[int, int] | None] = [None] * len(records)

    def done(i: int, err: object, msg: Message) -> None:
        assert err is None, err
        coords[i] = (msg.partition(), msg.offset())

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    for i, (key, value) in enumerate(records):
        producer.produce(topic, value, key, on_delivery=lambda e, m, i=i: done(i, e, m))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert all(c is not None for c in coords)
    return coords  # type: ignore[return-value]


@dataclass
class Reference:
    forecasts: dict[tuple[str, str, int], tuple[float, float, float]]  # (entity, issued, h)
    events: set[str]
    readings: int
    dead_letters: int


def reference(
    settings: Settings,
    records: list[tuple[bytes, bytes]],
    coords: list[tuple[int, int]],
    now_ms: int,
) -> Reference:
    """What one uninterrupted core per partition publishes for these records."""
    from sinks.encode import encode_anomalies, encode_forecasts

    by_part: dict[int, list[tuple[int, bytes]]] = {}
    for (_key, value), (part, off) in zip(records, coords, strict=True):
        by_part.setdefault(part, []).append((off, value))
    p = settings.processing
    forecasts: dict[tuple[str, str, int], tuple[float, float, float]] = {}
    events: set[str] = set()
    readings = dead = 0
    for items in by_part.values():
        items.sort()
        values = [v for _, v in items]
        decoded = decode_batch(
            values,
            [METER] * len(values),
            now_ms=now_ms,
            max_age_ms=p.max_age_s * 1000,
            max_future_ms=p.max_future_s * 1000,
        )
        result = GridProcessor(p.params()).process_batch(decoded.readings, now_ms)
        readings += len(decoded.readings) - len(result.rejections)
        dead += len(decoded.rejections) + len(result.rejections)
        forecasts.update(forecast_map([rec.value for rec in encode_forecasts(result.forecasts)]))
        events.update(
            orjson.loads(rec.value)["event_id"] for rec in encode_anomalies(result.anomalies)
        )
    return Reference(forecasts, events, readings, dead)


def forecast_map(values: list[bytes]) -> dict[tuple[str, str, int], tuple[float, float, float]]:
    out = {}
    for value in values:
        f = orjson.loads(value)
        out[(f["entity_id"], f["issued_at"], f["horizon_s"])] = (f["p10"], f["p50"], f["p90"])
    return out


def assert_same_forecasts(
    got: dict[tuple[str, str, int], tuple[float, float, float]],
    want: dict[tuple[str, str, int], tuple[float, float, float]],
) -> None:
    missing = want.keys() - got.keys()
    extra = got.keys() - want.keys()
    assert not missing and not extra, (
        f"{len(missing)} forecasts missing (e.g. {sorted(missing)[:3]}), "
        f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})"
    )
    differ = [k for k in want if not np.allclose(got[k], want[k], rtol=1e-9, atol=1e-9)]
    assert not differ, (
        f"{len(differ)} of {len(want)} forecasts differ from an uninterrupted run, e.g. "
        f"{differ[0]}: {got[differ[0]]} != {want[differ[0]]}"
    )
