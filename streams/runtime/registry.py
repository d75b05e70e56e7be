"""Schema Registry in and out: framed input turned into the JSON the decoder validates, and the
output contracts registered so forecasts and anomalies can be published framed.

Confluent's wire format is a magic byte 0, a 4-byte big-endian schema id, then the payload
(Avro binary, JSON text, or Protobuf message indexes and message). Plain JSON never starts with
byte 0, so framing is recognised without guessing. A framed record is decoded with confluent-
kafka's own deserializer for its schema's type, and its fields are handed to
``schemas.decode`` as JSON: one contract, one validator, whatever the wire format.

Per input topic, a format (``SchemaRegistrySettings``): ``auto`` takes plain JSON and any framed
record; ``json`` only plain JSON; ``json_schema``, ``avro`` and ``protobuf`` only records framed
with a schema of that type. A record that does not fit is dead-lettered with a reason naming the
mismatch; without a registry, a framed record is dead-lettered as
``schema_registry_not_configured``.
A registry that cannot be reached is not the record's fault: ``RegistryUnavailable`` is raised and
the batch waits for the registry (``streams.runtime.batch``).

Output (``output_format = "json_schema"``): the JSON Schemas of ``schemas/json`` are registered
(or, without ``auto_register``, looked up) under ``<topic>-value`` (the serializers' default
TopicNameStrategy) at start, and each record is framed with its id, byte for byte what
confluent-kafka's ``JSONSerializer`` writes, without validating every record again.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import fastavro
import httpx2
import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from schemas.batch import Rejection
from schemas.bounds import MAX_MESSAGE_BYTES
from schemas.exceptions import GridstreamError
from schemas.generate import JSON_DIR
from schemas.wire import proto_classes, proto_fields
from streams.config import ConfigError, TopicSettings
from streams.config_kafka import SchemaRegistrySettings

MAGIC = 0
# The registry's schema types, by the format names of the settings.
SCHEMA_TYPES = {"json_schema": "JSON", "avro": "AVRO", "protobuf": "PROTOBUF"}


class RegistryUnavailable(GridstreamError):
    """The Schema Registry did not answer (network, 5xx); retry, do not dead-letter."""


def framed_id(raw: bytes | None) -> int | None:
    """The schema id of a registry-framed value, None for anything else."""
    if raw is None or len(raw) < 5 or raw[0] != MAGIC:
        return None
    return int.from_bytes(raw[1:5], "big")


class Unframer:
    """Per batch: plain values pass through, framed ones become JSON or a rejection."""

    def __init__(
        self,
        registry: SchemaRegistrySettings,
        contracts: dict[str, str],  # input topic -> contract (meter, scada)
        client: SchemaRegistryClient | None = None,
    ) -> None:
        self.contracts = contracts
        self.formats = {
            topic: registry.meter_format if contract == "meter" else registry.scada_format
            for topic, contract in contracts.items()
        }
        if client is None and registry.url is not None:
            client = SchemaRegistryClient(registry.client_config())
        self.client = client
        self._decoders: dict[tuple[int, str], Callable[[bytes, str], bytes]] = {}
        self._strict = any(f not in ("auto", "json") for f in self.formats.values())

    def unframe(
        self, values: Sequence[bytes | None], topics: Sequence[str]
    ) -> tuple[list[bytes | None], dict[int, Rejection]]:
        """The values to decode as JSON (None where rejected) and the rejections by index."""
        framed = [i for i, v in enumerate(values) if v and v[0] == MAGIC]
        if not framed and not self._strict:
            return list(values), {}
        out = list(values)
        rejected: dict[int, Rejection] = {}
        for i in framed if not self._strict else range(len(values)):
            outcome = self._one(values[i], topics[i])
            if isinstance(outcome, Rejection):
                rejected[i] = Rejection(i, outcome.error_class, outcome.error)
                out[i] = None
            else:
                out[i] = outcome
        return out, rejected

    def _one(self, raw: bytes | None, topic: str) -> bytes | None | Rejection:
        fmt = self.formats.get(topic, "auto")
        schema_id = framed_id(raw)
        if raw is None or len(raw) > MAX_MESSAGE_BYTES:
            return raw  # the decoder names these
        if schema_id is None:
            if fmt in SCHEMA_TYPES:
                return Rejection(0, "not_framed", f"topic {topic} expects {fmt} records framed "
                                 "by a Schema Registry serializer (magic byte 0, schema id)")
            return raw
        if fmt == "json":
            return Rejection(0, "unexpected_framing", f"framed record (schema id {schema_id}) "
                             f"on topic {topic}, which is configured for plain JSON")
        if self.client is None:
            return Rejection(0, "schema_registry_not_configured",
                             f"framed by a Schema Registry serializer (schema id {schema_id}) but "
                             "no registry is configured (GRIDSTREAM_SCHEMA_REGISTRY__URL)")
        return self._decode(raw, topic, fmt, schema_id)

    def _decode(self, raw: bytes, topic: str, fmt: str, schema_id: int) -> bytes | Rejection:
        try:
            schema = self.client.get_schema(schema_id)  # type: ignore[union-attr] # cached
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return Rejection(0, "unknown_schema_id",
                                 f"schema id {schema_id} is not in the registry")
            # 401/403 (credentials), 429, 5xx: the registry's state, not the record's fault;
            # dead-lettering every framed record on a credential rotation would lose them all
            raise RegistryUnavailable(f"Schema Registry answered for schema id {schema_id}: "
                                      f"{exc}") from exc
        except httpx2.HTTPError as exc:
            raise RegistryUnavailable(f"Schema Registry unreachable: {exc}") from exc
        schema_type = schema.schema_type or "AVRO"
        if fmt in SCHEMA_TYPES and SCHEMA_TYPES[fmt] != schema_type:
            return Rejection(0, "wrong_schema_type", f"schema id {schema_id} is {schema_type}, "
                             f"topic {topic} expects {SCHEMA_TYPES[fmt]}")
        contract = self.contracts[topic]
        try:
            return self._decoder(schema_id, schema, contract)(raw, topic)
        except httpx2.HTTPError as exc:  # a deserializer fetching a referenced schema
            raise RegistryUnavailable(f"Schema Registry unreachable: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a poison record must never stop the loop
            kind = "" if isinstance(exc, SerializationError) else f"{type(exc).__name__}: "
            return Rejection(0, "schema_decode_failed",
                             f"{schema_type} payload of schema id {schema_id}: {kind}{exc}"[:300])

    def _decoder(self, schema_id: int, schema: Schema, contract: str) -> Callable[..., bytes]:
        key = (schema_id, contract)
        found = self._decoders.get(key)
        if found is None:
            found = self._decoders[key] = _to_json(schema, contract, self.client)
        return found


def _to_json(
    schema: Schema, contract: str, client: SchemaRegistryClient | None
) -> Callable[[bytes, str], bytes]:
    """``(framed value, topic) -> JSON`` for one writer schema.

    JSON Schema payloads are JSON text already (the deserializer would parse and validate them;
    the contract validates here). Avro without references is read with fastavro and the writer
    schema, which is what ``AvroDeserializer`` does, at a quarter of its per-record cost.
    Protobuf skips the message indexes and parses the contract's message, as
    ``ProtobufDeserializer`` given that message type does. Avro with references goes through
    confluent-kafka's deserializer. A test keeps the shortcuts equal to the deserializers.
    """
    schema_type = schema.schema_type or "AVRO"
    if schema_type == "JSON":
        return lambda raw, topic: raw[5:]
    if schema_type == "AVRO" and not schema.references:
        parsed = fastavro.parse_schema(_epoch_ms_as_long(orjson.loads(schema.schema_str)))
        read = fastavro.schemaless_reader
        return lambda raw, topic: orjson.dumps(read(io.BytesIO(raw[5:]), parsed, None))
    if schema_type == "PROTOBUF":
        message = proto_classes()[contract]
        return lambda raw, topic: orjson.dumps(
            proto_fields(message.FromString(raw[_message_indexes_end(raw):]))
        )
    deserialize = _deserializer(schema_type, client)
    return lambda raw, topic: orjson.dumps(
        deserialize(raw, SerializationContext(topic, MessageField.VALUE))
    )


def _message_indexes_end(raw: bytes) -> int:
    """Where a Protobuf payload starts: after the frame and its message indexes (a zigzag
    varint count, then that many varints; a single 0 byte stands for ``[0]``)."""
    pos = 5

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= len(raw) or shift > 63:
                raise ValueError("truncated message indexes")
            byte = raw[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (value >> 1) ^ -(value & 1)
            shift += 7

    count = varint()
    if count < 0 or count > 64:
        raise ValueError(f"bad message-index count {count}")
    for _ in range(count):
        varint()
    return pos


def _epoch_ms_as_long(schema: Any) -> Any:
    """The Avro schema with ``timestamp-millis`` read as its plain long: epoch milliseconds are
    one of the contract's ``ts`` forms, so the datetime round trip (and an RFC 3339 parse) is
    saved. Other logical types stay: a ``timestamp-micros`` still arrives as a UTC datetime, a
    ``local-timestamp-millis`` as a naive one, which the contract rejects as it should."""
    if isinstance(schema, list):
        return [_epoch_ms_as_long(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("logicalType") == "timestamp-millis" and schema.get("type") == "long":
        return "long"
    return {k: _epoch_ms_as_long(v) if k in ("type", "fields", "items", "values") else v
            for k, v in schema.items()}


def _deserializer(schema_type: str, client: SchemaRegistryClient | None) -> Callable[..., Any]:
    """confluent-kafka's deserializer for a schema type; the contract validates, not the serde."""
    if schema_type == "AVRO":
        return AvroDeserializer(client)
    if schema_type == "JSON":
        return JSONDeserializer(None, schema_registry_client=client, conf={"validate": False})
    raise ValueError(f"unsupported schema type {schema_type!r}")


def output_frames(
    registry: SchemaRegistrySettings, topics: TopicSettings,
    client: SchemaRegistryClient | None = None,
) -> dict[str, bytes]:
    """Output topic -> the 5-byte frame of its registered schema (empty for plain JSON)."""
    if registry.output_format == "json":
        return {}
    if registry.url is None and client is None:
        raise ConfigError("GRIDSTREAM_SCHEMA_REGISTRY__OUTPUT_FORMAT=json_schema needs "
                          "GRIDSTREAM_SCHEMA_REGISTRY__URL")
    client = client or SchemaRegistryClient(registry.client_config())
    frames = {}
    for topic, contract in ((topics.forecasts, "forecast"), (topics.anomalies, "anomaly_event")):
        subject = f"{topic}-value"
        schema = Schema((JSON_DIR / f"{contract}.schema.json").read_text(), "JSON")
        try:
            if not registry.auto_register:
                schema_id = client.lookup_schema(subject, schema).schema_id
            else:
                if registry.compatibility is not None:
                    client.set_compatibility(subject, registry.compatibility)
                schema_id = client.register_schema(subject, schema)
        except SchemaRegistryError as exc:
            raise ConfigError(f"Schema Registry subject {subject}: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise RegistryUnavailable(f"Schema Registry unreachable: {exc}") from exc
        frames[topic] = bytes([MAGIC]) + int(schema_id).to_bytes(4, "big")
    return frames
