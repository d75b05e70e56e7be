"""The Avro and Protobuf forms of the input contracts agree with the pydantic contracts, and
records written in them decode into the same readings as JSON."""

from __future__ import annotations

import io
import json

import fastavro
import orjson
import pytest

from schemas import wire
from schemas.decode import METER, SCADA, decode_batch
from schemas.readings import MeterReading, ScadaReading

MODELS = {METER: MeterReading, SCADA: ScadaReading}
DOCS = {
    METER: {"meter_id": "m-1", "ts": 1_717_236_000_000, "kw": 0.0, "voltage_v": 231.5},
    SCADA: {"asset_id": "tx-4", "asset_kind": "transformer", "ts": 1_717_236_000_000,
            "p_mw": 1.25, "frequency_hz": 50.01},
}


def _decode(value: bytes, contract: str) -> dict[str, object]:
    out = decode_batch([value], [contract], now_ms=1_717_236_100_000,
                       max_age_ms=86_400_000, max_future_ms=300_000)
    assert out.rejections == []
    r = out.readings
    row = {"entity": r.entity[0], "ts": int(r.ts_ms[0]), "value": float(r.value[0]),
           "voltage": float(r.voltage[0]), "frequency": float(r.frequency[0])}
    return {k: None if v != v else v for k, v in row.items()}  # NaN (absent) as None


def test_the_producer_files_are_what_the_definitions_give() -> None:
    assert wire.differences() == []


@pytest.mark.parametrize("contract", [METER, SCADA])
def test_avro_and_protobuf_carry_exactly_the_contracts_fields(contract: str) -> None:
    fields = set(MODELS[contract].model_fields)
    avro = {f["name"] for f in json.loads(wire.AVRO_SCHEMAS[contract])["fields"]}
    proto = {f.name for f in wire.proto_classes()[contract].DESCRIPTOR.fields}
    assert avro == fields and proto == fields


@pytest.mark.parametrize("contract", [METER, SCADA])
def test_avro_and_protobuf_records_decode_like_json(contract: str) -> None:
    doc = DOCS[contract]
    want = _decode(orjson.dumps(doc), contract)
    parsed = fastavro.parse_schema(json.loads(wire.AVRO_SCHEMAS[contract]))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, doc)
    buf.seek(0)
    from_avro = fastavro.schemaless_reader(buf, parsed, None)
    assert _decode(orjson.dumps(from_avro), contract) == want
    message = wire.proto_classes()[contract](**doc)
    back = type(message).FromString(message.SerializeToString())
    fields = wire.proto_fields(back)
    assert "kvar" not in fields and "q_mvar" not in fields  # absent stays absent, not 0.0
    assert _decode(orjson.dumps(fields), contract) == want
