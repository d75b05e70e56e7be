"""Decode cost per wire format: µs per meter reading from Kafka value bytes to validated columns.

    python -m benchmarks.decode_formats [--readings 20000] [--repeats 5] [--json FILE]

The same readings (one meter value each, half with a voltage channel) are encoded four ways:
plain JSON, and framed by confluent-kafka's own serializers as JSON Schema, Avro and Protobuf.
Each is decoded the way ``gridstream run`` decodes a batch: ``Unframer.unframe`` (the registry's
deserializer for framed records) then ``schemas.decode.decode_batch``. Batches of 5,000; the
best of ``--repeats`` is reported (the least disturbed by other processes on a shared machine).
The registry is confluent-kafka's in-process ``MockSchemaRegistryClient``: the deserializers
cache schemas by id, so after the first record no lookup reaches a registry either way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import orjson
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.decode import decode_batch
from schemas.generate import JSON_DIR
from schemas.wire import METER_AVRO, proto_classes
from streams.config_kafka import SchemaRegistrySettings
from streams.runtime.registry import Unframer

TOPIC = "gridstream.readings.meter"
BATCH = 5000
NOW_MS = 1_717_236_900_000


def readings(n: int) -> list[dict[str, object]]:
    return [
        {
            "meter_id": f"meter-{i % 2000:06d}",
            "ts": NOW_MS - 86_000_000 + (i // 2000) * 900_000,
            "kw": 1.0 + (i % 17) * 0.25,
            **({"voltage_v": 229.5 + (i % 7) * 0.1} if i % 2 else {}),
        }
        for i in range(n)
    ]


def encoded(docs: list[dict[str, object]], client: MockSchemaRegistryClient) -> dict[str, list]:
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    meter = proto_classes()["meter"]
    json_ser = JSONSerializer((JSON_DIR / "meter_reading.schema.json").read_text(), client)
    avro_ser = AvroSerializer(client, METER_AVRO)
    proto_ser = ProtobufSerializer(meter, client, {"use.deprecated.format": False})
    return {
        "json": [orjson.dumps(d) for d in docs],
        "json_schema": [json_ser(d, SerializationContext(f"{TOPIC}.js", MessageField.VALUE))
                        for d in docs],
        "avro": [avro_ser(d, SerializationContext(f"{TOPIC}.avro", MessageField.VALUE))
                 for d in docs],
        "protobuf": [proto_ser(meter(**d), ctx) for d in docs],
    }


def decode_us(values: list[bytes], unframer: Unframer, repeats: int) -> float:
    """Best µs per reading over ``repeats`` passes, every reading accepted."""
    best = float("inf")
    topics = [TOPIC] * BATCH
    contracts = ["meter"] * BATCH
    for _ in range(repeats):
        started = time.perf_counter()
        for lo in range(0, len(values), BATCH):
            chunk = values[lo : lo + BATCH]
            plain, rejected = unframer.unframe(chunk, topics[: len(chunk)])
            out = decode_batch(plain, contracts[: len(chunk)], now_ms=NOW_MS,
                               max_age_ms=86_400_000, max_future_ms=300_000)
            assert not rejected and not out.rejections, (rejected, out.rejections[:1])
        best = min(best, time.perf_counter() - started)
    return best / len(values) * 1e6


def measure(n: int = 20_000, repeats: int = 5) -> dict[str, float]:
    """µs per reading by format: json, json_schema, avro, protobuf."""
    client = MockSchemaRegistryClient({"url": "mock://bench"})
    unframer = Unframer(SchemaRegistrySettings(url="mock://bench"), {TOPIC: "meter"}, client)
    values = encoded(readings(n), client)
    return {fmt: round(decode_us(v, unframer, repeats), 3) for fmt, v in values.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20_000, help="readings per format")
    parser.add_argument("--repeats", type=int, default=5, help="passes; the best is reported")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = measure(args.readings, args.repeats)
    for fmt, us in figures.items():
        print(f"{fmt:12s} {us:7.2f} µs/reading  ({us / figures['json']:.1f}x plain JSON)")
    if args.json:
        args.json.write_text(json.dumps({"decode_us_per_reading": figures}, indent=2))
    return figures


if __name__ == "__main__":
    main()
