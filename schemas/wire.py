"""The input contracts as Avro schemas and Protobuf messages, for producers behind a Schema
Registry; JSON Schema producers use ``schemas/json`` (generated from the same pydantic models).

The pydantic contract stays the one rule book: a record decoded from Avro or Protobuf becomes the
same field mapping as a JSON reading and is validated by ``schemas.decode`` like any other. These
definitions only fix names and types on the wire:

- field names are the JSON contract's; optional channels are Avro ``["null", "double"]`` unions
  and Protobuf ``optional double`` (presence is kept, so "absent" never reads as 0.0);
- ``ts`` is Avro ``long`` with logical type ``timestamp-millis``, Protobuf ``int64`` epoch ms;
- Protobuf messages ``gridstream.v1.MeterReading`` and ``gridstream.v1.ScadaReading`` live in one
  file, ``gridstream/v1/readings.proto`` (its text: ``PROTO_TEXT``).

``python -m schemas.wire`` writes them for producers to ``schemas/avro/*.avsc`` and
``schemas/proto/gridstream/v1/readings.proto``; a test fails if those drift.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from schemas.bounds import SCADA_KINDS

_TS_AVRO: Final = {"type": "long", "logicalType": "timestamp-millis"}
_OPT: Final = ["null", "double"]

_METER_OPTIONAL: Final = ("kvar", "voltage_v", "current_a")
_SCADA_OPTIONAL: Final = ("q_mvar", "voltage_kv", "current_a", "frequency_hz", "temperature_c")


def _avro_record(name: str, head: list[dict[str, Any]], optional: tuple[str, ...]) -> str:
    fields = [
        *head,
        *({"name": f, "type": _OPT, "default": None} for f in optional),
        {"name": "quality", "type": ["null", "string"], "default": None},
    ]
    doc = {"type": "record", "name": name, "namespace": "gridstream.v1", "fields": fields}
    return json.dumps(doc, separators=(",", ":"))


METER_AVRO: Final = _avro_record(
    "MeterReading",
    [
        {"name": "meter_id", "type": "string"},
        {"name": "ts", "type": _TS_AVRO},
        {"name": "kw", "type": "double"},
    ],
    _METER_OPTIONAL,
)
SCADA_AVRO: Final = _avro_record(
    "ScadaReading",
    [
        {"name": "asset_id", "type": "string"},
        {"name": "asset_kind", "type": "string", "doc": "one of " + ", ".join(SCADA_KINDS)},
        {"name": "ts", "type": _TS_AVRO},
        {"name": "p_mw", "type": "double"},
    ],
    _SCADA_OPTIONAL,
)

PROTO_FILE: Final = "gridstream/v1/readings.proto"
PROTO_PACKAGE: Final = "gridstream.v1"
# (message, [(field, type)]): numbers follow the order; optional doubles keep presence.
_PROTO_MESSAGES: Final = (
    ("MeterReading", [("meter_id", "string"), ("ts", "int64"), ("kw", "double")], _METER_OPTIONAL),
    (
        "ScadaReading",
        [("asset_id", "string"), ("asset_kind", "string"), ("ts", "int64"), ("p_mw", "double")],
        _SCADA_OPTIONAL,
    ),
)
_PB_TYPES: Final = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
}


def _proto_fields(required: list[tuple[str, str]], optional: tuple[str, ...]) -> list[tuple]:
    """(name, type, is_optional) in field-number order; ``quality`` is the last optional."""
    return [
        *((n, t, False) for n, t in required),
        *((n, "double", True) for n in optional),
        ("quality", "string", True),
    ]


def _proto_text() -> str:
    lines = ['syntax = "proto3";', "", f"package {PROTO_PACKAGE};", ""]
    for name, required, optional in _PROTO_MESSAGES:
        lines.append(f"message {name} {{")
        for number, (field, kind, opt) in enumerate(_proto_fields(required, optional), 1):
            lines.append(f"  {'optional ' if opt else ''}{kind} {field} = {number};")
        lines += ["}", ""]
    return "\n".join(lines)


PROTO_TEXT: Final = _proto_text()


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``PROTO_TEXT`` as a descriptor, built field by field (no protoc at run time)."""
    fd = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE, package=PROTO_PACKAGE, syntax="proto3")
    label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for name, required, optional in _PROTO_MESSAGES:
        msg = fd.message_type.add(name=name)
        for number, (field, kind, opt) in enumerate(_proto_fields(required, optional), 1):
            f = msg.field.add(name=field, number=number, type=_PB_TYPES[kind], label=label)
            if opt:  # proto3 ``optional``: a synthetic one-field oneof carries presence
                f.oneof_index = len(msg.oneof_decl)
                f.proto3_optional = True
                msg.oneof_decl.add(name=f"_{field}")
    return fd


@cache
def proto_classes() -> dict[str, type[Message]]:
    """The generated message classes by contract (``meter``, ``scada``)."""
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(_file_descriptor())
    classes = {
        contract: message_factory.GetMessageClass(fd.message_types_by_name[name])
        for contract, name in (("meter", "MeterReading"), ("scada", "ScadaReading"))
    }
    return classes


def proto_fields(msg: Message) -> dict[str, object]:
    """The fields of a Protobuf reading as plain values: absent optionals left out, the others
    always present (proto3 does not tell a required 0.0 from an unset one)."""
    return {
        f.name: getattr(msg, f.name)
        for f in msg.DESCRIPTOR.fields
        if not f.has_presence or msg.HasField(f.name)
    }


AVRO_SCHEMAS: Final = {"meter": METER_AVRO, "scada": SCADA_AVRO}


WIRE_DIR: Final = Path(__file__).resolve().parent


def files() -> dict[str, str]:
    """The files producers use, path relative to ``schemas/`` -> content."""
    pretty = {name: json.dumps(json.loads(text), indent=2) + "\n" for name, text in
              (("meter_reading", METER_AVRO), ("scada_reading", SCADA_AVRO))}
    return {
        "avro/meter_reading.avsc": pretty["meter_reading"],
        "avro/scada_reading.avsc": pretty["scada_reading"],
        f"proto/{PROTO_FILE}": PROTO_TEXT,
    }


def differences(directory: Path = WIRE_DIR) -> list[str]:
    """Wire files that are missing or differ from the definitions here."""
    return [
        rel for rel, text in files().items()
        if not (directory / rel).is_file() or (directory / rel).read_text() != text
    ]


if __name__ == "__main__":  # python -m schemas.wire: write the Avro and Protobuf files
    for rel, text in files().items():
        (WIRE_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
        (WIRE_DIR / rel).write_text(text)
        print(f"wrote schemas/{rel}")
