"""Output encoding: exactly the bytes a per-record ``orjson.dumps`` would give, with headers."""

from __future__ import annotations

import numpy as np
import orjson

from schemas.batch import ForecastBatch
from sinks.encode import FORECAST_HEADERS, encode_forecasts

HOSTILE_IDS = [
    "meter-1",
    'x,{"entity_id":1}',  # the record separator, inside an id
    'quote"and}brace{',
    "ünïcödé-電錶",
    ",{",
]


def _batch(ids: list[str]) -> ForecastBatch:
    n = len(ids)
    kinds = np.array(["meter" if i % 2 else "feeder" for i in range(n)], dtype=object)
    return ForecastBatch(
        entity=np.array(ids, dtype=object),
        kind=kinds,
        issued_ms=np.full(n, 1_717_236_900_000, dtype=np.int64) + np.arange(n),
        horizon_s=np.tile(np.array([900, 3600]), n)[:n],
        target_ms=np.full(n, 1_717_237_800_000, dtype=np.int64),
        p10=np.linspace(-1.0, 1.0, n),
        p50=np.array([np.nan, *np.linspace(0.0, 2.0, n - 1)]),  # NaN becomes null
        p90=np.linspace(1.0, 3.0, n),
        model="baseline-seasonal-blend@1",
    )


def test_forecast_records_equal_one_dump_per_record_even_for_hostile_ids() -> None:
    batch = _batch(HOSTILE_IDS * 3)
    records = encode_forecasts(batch)
    assert len(records) == len(batch)
    for i, rec in enumerate(records):
        doc = orjson.loads(rec.value)
        assert doc["entity_id"] == batch.entity[i]
        assert rec.key == batch.entity[i].encode()
        assert rec.headers == FORECAST_HEADERS
        assert doc["unit"] == ("kW" if batch.kind[i] == "meter" else "MW")
        expected = {
            "entity_id": batch.entity[i],
            "entity_kind": batch.kind[i],
            "issued_at": doc["issued_at"],
            "horizon_s": int(batch.horizon_s[i]),
            "target_ts": doc["target_ts"],
            "p10": float(batch.p10[i]),
            "p50": float(batch.p50[i]),
            "p90": float(batch.p90[i]),
            "unit": doc["unit"],
            "model": batch.model,
        }
        assert rec.value == orjson.dumps(expected)
    assert orjson.loads(records[0].value)["p50"] is None
    assert orjson.loads(records[0].value)["issued_at"] == "2024-06-01T10:15:00.000Z"


def test_empty_batch_encodes_to_nothing() -> None:
    assert encode_forecasts(ForecastBatch.empty("m@1")) == []
