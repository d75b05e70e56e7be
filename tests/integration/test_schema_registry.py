"""Schema Registry in and out, on real parts: confluent-kafka's own serializers and client, a
Schema Registry speaking the real REST protocol (``tests.schemaregistry``), the embedded broker.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.generate import JSON_DIR
from schemas.wire import METER_AVRO, proto_classes, proto_fields
from streams.config import Settings
from streams.config_kafka import SchemaRegistrySettings
from streams.runtime.registry import RegistryUnavailable, Unframer
from streams.runtime.runner import StreamRunner, ensure_topics
from tests.integration.conftest import RunnerThread, make_settings, wait_until
from tests.integration.helpers import headers, read_all
from tests.schemaregistry import RegistryStore, SchemaRegistryServer

pytestmark = pytest.mark.integration

STEP_MS = 900_000
READINGS = 16


@pytest.fixture
def registry() -> Iterator[SchemaRegistryServer]:
    with SchemaRegistryServer() as server:
        yield server


def _serializers(url: str) -> dict[str, object]:
    """One serializer per wire format, each registering under its own subject of the topic."""
    client = SchemaRegistryClient({"url": url})
    per_record = {"subject.name.strategy": topic_record_subject_name_strategy}
    return {
        "avro": AvroSerializer(client, METER_AVRO),
        "json": JSONSerializer(
            (JSON_DIR / "meter_reading.schema.json").read_text(), client, conf=per_record
        ),
        "proto": ProtobufSerializer(
            proto_classes()["meter"], client, {"use.deprecated.format": False, **per_record}
        ),
    }


def _produce_framed(bootstrap: str, url: str, topic: str, now_ms: int) -> dict[str, int]:
    """READINGS readings of one meter per format, framed by confluent-kafka's serializers."""
    serializers = _serializers(url)
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    start = now_ms - READINGS * STEP_MS
    meter_class = proto_classes()["meter"]
    for i in range(READINGS):
        for fmt, ser in serializers.items():
            meter = f"meter-{fmt}"
            doc = {"meter_id": meter, "ts": start + i * STEP_MS, "kw": 2.0 + 0.1 * (i % 4)}
            if fmt == "proto":
                value = ser(meter_class(**doc, voltage_v=230.0), ctx)  # type: ignore[operator]
            else:
                value = ser({**doc, "voltage_v": 230.0}, ctx)  # type: ignore[operator]
            producer.produce(topic, value, meter.encode())
    assert producer.flush(30) == 0
    return {f"meter-{fmt}": READINGS for fmt in serializers}


def _settings(bootstrap: str, unique: str, chdb_path: Path, **registry: object) -> Settings:
    base = make_settings(bootstrap, unique, chdb_path, clickhouse="none")
    return base.model_copy(update={"schema_registry": SchemaRegistrySettings(**registry)})


def _run_on_framed(
    settings: Settings, bootstrap: str, url: str
) -> tuple[StreamRunner, dict[str, int]]:
    """Produce the framed readings of every format, run the processor until it consumed them."""
    ensure_topics(settings)
    sent = _produce_framed(bootstrap, url, settings.topics.meter, int(time.time() * 1000))
    runner = StreamRunner(settings)
    with RunnerThread(runner) as running:
        wait_until(
            "every framed reading consumed",
            lambda: runner.stats.counters["consumed"] >= sum(sent.values()),
            check=running.check,
        )
    return runner, sent


def test_avro_json_schema_and_protobuf_readings_are_scored_end_to_end(
    bootstrap: str, unique: str, chdb_path: Path, registry: SchemaRegistryServer
) -> None:
    settings = _settings(
        bootstrap, unique, chdb_path, url=registry.url, output_format="json_schema"
    )
    runner, sent = _run_on_framed(settings, bootstrap, registry.url)
    assert runner.stats.counters["dead_letters"] == 0
    assert runner.stats.counters["scored"] + runner.stats.counters["warming_up"] == 48
    # forecasts are framed with the registered forecast schema, readable by JSONDeserializer
    client = SchemaRegistryClient({"url": registry.url})
    reader = JSONDeserializer(None, schema_registry_client=client)
    ctx = SerializationContext(settings.topics.forecasts, MessageField.VALUE)
    forecasts = read_all(bootstrap, settings.topics.forecasts, expect=1)
    docs = [reader(m.value(), ctx) for m in forecasts]
    assert {d["entity_id"] for d in docs} == set(sent)
    subjects = set(client.get_subjects())
    topic = settings.topics.meter
    assert {
        f"{topic}-value",  # Avro: TopicNameStrategy
        f"{topic}-MeterReading",  # JSON Schema: its title
        f"{topic}-gridstream.v1.MeterReading",  # Protobuf: its full name
        f"{settings.topics.forecasts}-value",
        f"{settings.topics.anomalies}-value",
    } <= subjects


def test_without_a_registry_framed_readings_are_dead_lettered_saying_so(
    bootstrap: str, unique: str, chdb_path: Path, registry: SchemaRegistryServer
) -> None:
    settings = _settings(bootstrap, unique, chdb_path)  # no registry URL
    _run_on_framed(settings, bootstrap, registry.url)
    dead = read_all(bootstrap, settings.topics.dead_letters, expect=48)
    reasons = Counter(headers(m)["__connect.errors.exception.class.name"].decode() for m in dead)
    assert reasons == {"schema_registry_not_configured": 48}
    message = headers(dead[0])["__connect.errors.exception.message"].decode()
    assert "GRIDSTREAM_SCHEMA_REGISTRY__URL" in message and "schema id" in message


# -- the format rules, record by record (no broker needed) ----------------------------------------
def _framed(url: str, topic: str, fmt: str) -> bytes:
    ser = _serializers(url)[fmt]
    ctx = SerializationContext(topic, MessageField.VALUE)
    doc = {"meter_id": "m1", "ts": 1_700_000_000_000, "kw": 1.5}
    return ser(proto_classes()["meter"](**doc) if fmt == "proto" else doc, ctx)  # type: ignore


@pytest.mark.parametrize(
    ("fmt", "record", "reason"),
    [
        ("avro", "plain", "not_framed"),
        ("avro", "json", "wrong_schema_type"),
        ("json", "avro", "unexpected_framing"),
        ("protobuf", "proto", None),
        ("json_schema", "json", None),
        ("auto", "unknown_id", "unknown_schema_id"),
        ("auto", "garbage", "schema_decode_failed"),
    ],
)
def test_each_topic_format_takes_only_its_own_records(
    registry: SchemaRegistryServer, fmt: str, record: str, reason: str | None
) -> None:
    unframer = Unframer(SchemaRegistrySettings(url=registry.url, meter_format=fmt), {"t": "meter"})
    values = {
        "plain": b'{"meter_id":"m1","ts":1700000000000,"kw":1.5}',
        "unknown_id": b"\x00\x00\x00\x03\xe7{}",
    }
    if record in ("avro", "json", "proto"):
        values[record] = _framed(registry.url, "t", record)
    values["garbage"] = _framed(registry.url, "t", "avro")[:6]
    out, rejected = unframer.unframe([values[record]], ["t"])
    if reason is None:
        assert rejected == {} and b'"meter_id":"m1"' in out[0]  # type: ignore[operator]
    else:
        assert out == [None] and rejected[0].error_class == reason


def test_an_unreachable_registry_is_retried_not_dead_lettered(
    registry: SchemaRegistryServer,
) -> None:
    framed = _framed(registry.url, "t", "avro")
    down = Unframer(SchemaRegistrySettings(url="http://127.0.0.1:9"), {"t": "meter"})
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        down.unframe([framed], ["t"])


def test_the_endpoint_checks_compatibility_as_the_registry_does(
    registry: SchemaRegistryServer,
) -> None:
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": registry.url})
    v1 = METER_AVRO
    added_optional = METER_AVRO.replace(
        '{"name":"quality"',
        '{"name":"site","type":["null","string"],"default":null},{"name":"quality"',
    )
    added_required = METER_AVRO.replace(
        '{"name":"quality"', '{"name":"site","type":"string"},{"name":"quality"'
    )
    assert client.register_schema("s-value", Schema(v1, "AVRO")) == 1
    assert client.register_schema("s-value", Schema(v1, "AVRO")) == 1  # the same id again
    assert client.test_compatibility("s-value", Schema(added_optional, "AVRO"))
    assert not client.test_compatibility("s-value", Schema(added_required, "AVRO"))
    with pytest.raises(SchemaRegistryError, match="incompatible"):
        client.register_schema("s-value", Schema(added_required, "AVRO"))
    client.set_compatibility("s-value", "NONE")
    assert client.register_schema("s-value", Schema(added_required, "AVRO")) == 2
    assert client.get_latest_version("s-value").version == 2


def _as_reading(value: bytes) -> tuple:
    """What the contract makes of a value: (entity, ts ms, kw, voltage), or its rejection."""
    from schemas.decode import decode_batch

    out = decode_batch(
        [value], ["meter"], now_ms=1_700_000_100_000, max_age_ms=10**12, max_future_ms=10**6
    )
    if out.rejections:
        return (out.rejections[0].error_class,)
    r = out.readings
    return (r.entity[0], int(r.ts_ms[0]), float(r.value[0]), repr(float(r.voltage[0])))


def test_the_shortcuts_read_what_confluent_kafkas_deserializers_read(
    registry: SchemaRegistryServer,
) -> None:
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    client = SchemaRegistryClient({"url": registry.url})
    unframer = Unframer(SchemaRegistrySettings(url=registry.url), {"t": "meter"})
    ctx = SerializationContext("t", MessageField.VALUE)
    readers = {
        "avro": AvroDeserializer(client),
        "json": JSONDeserializer(None, schema_registry_client=client),
        "proto": ProtobufDeserializer(proto_classes()["meter"], {"use.deprecated.format": False}),
    }
    for fmt, reader in readers.items():
        framed = _framed(registry.url, "t", fmt)
        (plain,), rejected = unframer.unframe([framed], ["t"])
        assert rejected == {}
        read = reader(framed, ctx)
        expected = proto_fields(read) if fmt == "proto" else read
        assert _as_reading(plain) == _as_reading(orjson.dumps(expected))  # type: ignore[arg-type]
    # a Protobuf record of the second message of a file (indexes [1]) parses the same way
    scada = proto_classes()["scada"](asset_id="tx-1", asset_kind="feeder", ts=1, p_mw=0.5)
    ser = ProtobufSerializer(proto_classes()["scada"], client, {"use.deprecated.format": False})
    framed = ser(scada, SerializationContext("s", MessageField.VALUE))
    two = Unframer(SchemaRegistrySettings(url=registry.url), {"s": "scada"})
    (plain,), _ = two.unframe([framed], ["s"])
    assert orjson.loads(plain) == {"asset_id": "tx-1", "asset_kind": "feeder", "ts": 1, "p_mw": 0.5}


def test_output_subjects_are_registered_or_looked_up_with_the_configured_compatibility(
    registry: SchemaRegistryServer,
) -> None:
    from streams.config import ConfigError, TopicSettings
    from streams.runtime.registry import output_frames

    topics = TopicSettings(forecasts="fc", anomalies="an")
    lookup_only = SchemaRegistrySettings(
        url=registry.url, output_format="json_schema", auto_register=False
    )
    with pytest.raises(ConfigError, match="subject fc-value"):
        output_frames(lookup_only, topics)  # a managed registry without our subjects
    register = SchemaRegistrySettings(
        url=registry.url, output_format="json_schema", compatibility="FULL"
    )
    frames = output_frames(register, topics)
    client = SchemaRegistryClient({"url": registry.url})
    assert client.get_compatibility("fc-value") == "FULL"
    for topic, frame in frames.items():
        latest = client.get_latest_version(f"{topic}-value")
        assert frame == b"\x00" + latest.schema_id.to_bytes(4, "big")
        assert latest.schema.schema_type == "JSON"
    assert output_frames(lookup_only, topics) == frames  # registered now: found by lookup
    assert output_frames(SchemaRegistrySettings(), topics) == {}  # plain JSON: no registry


@pytest.mark.parametrize(
    ("logical", "ts", "want"),
    [
        ("timestamp-millis", 1_700_000_000_123, 1_700_000_000_123),
        ("timestamp-micros", 1_700_000_000_123_456, 1_700_000_000_123),
    ],
)
def test_an_avro_writer_schema_of_its_own_is_read_by_its_logical_types(
    registry: SchemaRegistryServer, logical: str, ts: int, want: int
) -> None:
    """A producer's own schema (another namespace, micros, an extra field) reads correctly."""
    schema = orjson.dumps(
        {
            "type": "record",
            "name": "Reading",
            "namespace": "utility.ami",
            "fields": [
                {"name": "meter_id", "type": "string"},
                {"name": "ts", "type": {"type": "long", "logicalType": logical}},
                {"name": "kw", "type": "double"},
                {"name": "firmware", "type": "string"},
            ],
        }
    ).decode()
    ser = AvroSerializer(SchemaRegistryClient({"url": registry.url}), schema)
    framed = ser(
        {"meter_id": "m-7", "ts": ts, "kw": 3.5, "firmware": "4.2"},
        SerializationContext("u", MessageField.VALUE),
    )
    unframer = Unframer(SchemaRegistrySettings(url=registry.url), {"u": "meter"})
    (plain,), rejected = unframer.unframe([framed], ["u"])
    assert rejected == {}
    assert _as_reading(plain)[:3] == ("m-7", want, 3.5)  # type: ignore[arg-type]


def test_while_the_registry_is_down_input_waits_health_says_why_and_nothing_is_dead_lettered(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    from streams.ops.monitor import Monitor

    store = RegistryStore()
    with SchemaRegistryServer(store) as first:  # the producers' registry, then it goes down
        url, port = first.url, int(first.url.rsplit(":", 1)[1])
        settings = _settings(bootstrap, unique, chdb_path, url=url)
        ensure_topics(settings)
        sent = _produce_framed(bootstrap, url, settings.topics.meter, int(time.time() * 1000))
    monitor = Monitor(clickhouse_enabled=False)
    runner = StreamRunner(settings, monitor=monitor)
    with RunnerThread(runner) as running:
        wait_until(
            "health to name the registry",
            lambda: any("schema_registry failing" in r for r in monitor.health.evaluate().reasons),
            check=running.check,
        )
        assert runner.stats.counters["consumed"] == 0
        with SchemaRegistryServer(store, port=port):  # back, same schemas, same address
            wait_until(
                "every reading consumed",
                lambda: runner.stats.counters["consumed"] >= sum(sent.values()),
                check=running.check,
            )
            assert not any("schema_registry" in r for r in monitor.health.evaluate().reasons)
    assert runner.stats.counters["dead_letters"] == 0
    assert runner.stats.counters["schema_registry_retries"] >= 1
