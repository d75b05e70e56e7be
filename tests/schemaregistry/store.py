"""The registry's state and rules: subjects, versions, global schema ids, compatibility.

Kept to what Confluent Schema Registry does for the calls confluent-kafka's client makes:

- a schema (text + type + references) gets one global id, the same id under every subject that
  registers an identical schema; registering it again under a subject returns its existing id;
- versions per subject count from 1; ``latest`` is the highest;
- compatibility (``BACKWARD`` by default, per subject or global; ``NONE``, ``BACKWARD``,
  ``FORWARD``, ``FULL`` and their ``_TRANSITIVE`` forms) is checked when a new version is
  registered: Avro with the reference implementation's checker (``avro.compatibility``), JSON
  Schema by the rules that matter for records (a field may not become required in a reader that a
  writer may omit, a property may not change its type, closed content models stay closed), and
  Protobuf not at all (accepted, as with ``NONE``; said here so no test relies on it).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse as parse_avro

LEVELS = frozenset(
    {"NONE", "BACKWARD", "FORWARD", "FULL"}
    | {f"{x}_TRANSITIVE" for x in ("BACKWARD", "FORWARD", "FULL")}
)


class Incompatible(Exception):
    """A new version breaks the subject's compatibility level (HTTP 409)."""


class InvalidSchema(Exception):
    """The schema text does not parse for its type (HTTP 422, error 42201)."""


@dataclass(frozen=True, slots=True)
class Stored:
    schema: str
    schema_type: str  # AVRO, JSON or PROTOBUF
    references: tuple[tuple[str, str, int], ...] = ()

    def document(self) -> dict[str, object]:
        doc: dict[str, object] = {"schema": self.schema}
        if self.schema_type != "AVRO":  # the registry leaves out its default type
            doc["schemaType"] = self.schema_type
        if self.references:
            doc["references"] = [
                {"name": n, "subject": s, "version": v} for n, s, v in self.references
            ]
        return doc


@dataclass(slots=True)
class RegistryStore:
    """Subjects -> versions -> schema ids, and the compatibility level of each subject."""

    global_level: str = "BACKWARD"
    by_id: dict[int, Stored] = field(default_factory=dict)
    ids: dict[Stored, int] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)  # version i+1 -> schema id
    levels: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, schema: Stored) -> tuple[int, int]:
        """(id, version) of ``schema`` under ``subject``, adding a version if it is new there."""
        _parse(schema)
        with self.lock:
            versions = self.subjects.setdefault(subject, [])
            known = self.ids.get(schema)
            if known is not None and known in versions:
                return known, versions.index(known) + 1
            self._check(subject, schema, versions)
            if known is None:
                known = len(self.by_id) + 1
                self.by_id[known] = schema
                self.ids[schema] = known
            versions.append(known)
            return known, len(versions)

    def lookup(self, subject: str, schema: Stored) -> tuple[int, int] | None:
        with self.lock:
            known = self.ids.get(schema)
            versions = self.subjects.get(subject, [])
            if known is None or known not in versions:
                return None
            return known, versions.index(known) + 1

    def version(self, subject: str, version: str) -> tuple[int, int] | None:
        """(id, version number) of ``version`` (a number or ``latest``), None if absent."""
        with self.lock:
            versions = self.subjects.get(subject)
            if not versions:
                return None
            number = len(versions) if version in ("latest", "-1") else int(version)
            if not 1 <= number <= len(versions):
                return None
            return versions[number - 1], number

    def level(self, subject: str | None) -> str:
        return self.levels.get(subject, self.global_level) if subject else self.global_level

    def compatible(self, subject: str, schema: Stored, version: str = "latest") -> bool:
        """Whether ``schema`` could be registered after ``version`` of the subject."""
        _parse(schema)
        found = self.version(subject, version)
        if found is None:
            return True
        try:
            _pairwise(self.level(subject), schema, self.by_id[found[0]])
        except Incompatible:
            return False
        return True

    def _check(self, subject: str, schema: Stored, versions: list[int]) -> None:
        level = self.level(subject)
        if level == "NONE" or not versions:
            return
        olds = versions if level.endswith("_TRANSITIVE") else versions[-1:]
        for old in olds:
            _pairwise(level, schema, self.by_id[old])


def _parse(schema: Stored) -> None:
    try:
        if schema.schema_type == "AVRO":
            parse_avro(schema.schema)
        elif schema.schema_type == "JSON":
            json.loads(schema.schema)
        elif schema.schema_type != "PROTOBUF":
            raise InvalidSchema(f"unknown schema type {schema.schema_type!r}")
    except (ValueError, TypeError) as exc:
        raise InvalidSchema(f"invalid {schema.schema_type} schema: {exc}") from None


def _pairwise(level: str, new: Stored, old: Stored) -> None:
    """Raise ``Incompatible`` if ``new`` breaks ``level`` against ``old``."""
    if new.schema_type != old.schema_type:
        raise Incompatible(f"schema type {new.schema_type} after {old.schema_type}")
    base = level.removesuffix("_TRANSITIVE")
    pairs = {
        "BACKWARD": [(new, old)],  # (reader, writer): new readers read old data
        "FORWARD": [(old, new)],
        "FULL": [(new, old), (old, new)],
    }.get(base, [])
    for reader, writer in pairs:
        if new.schema_type == "AVRO":
            _avro_reads(reader, writer)
        elif new.schema_type == "JSON":
            _json_reads(json.loads(reader.schema), json.loads(writer.schema))


def _avro_reads(reader: Stored, writer: Stored) -> None:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        parse_avro(reader.schema), parse_avro(writer.schema)
    )
    if result.compatibility is not SchemaCompatibilityType.compatible:
        raise Incompatible("; ".join(sorted(result.messages)) or "incompatible Avro schemas")


def _json_reads(reader: dict, writer: dict) -> None:
    """Can a reader with schema ``reader`` accept every record valid under ``writer``?"""
    r_props, w_props = reader.get("properties", {}), writer.get("properties", {})
    newly_required = set(reader.get("required", [])) - set(writer.get("required", []))
    if newly_required:
        raise Incompatible(f"required by the reader, optional for the writer: {newly_required}")
    for name, prop in r_props.items():
        r_types = _types(prop)
        w_types = _types(w_props.get(name, {}))
        if "number" in r_types:
            w_types.discard("integer")  # every integer is a number
        if name in w_props and r_types and not (w_types and w_types <= r_types):
            raise Incompatible(f"property {name!r} changed type")
    if reader.get("additionalProperties") is False and set(w_props) - set(r_props):
        raise Incompatible(f"closed reader lacks {sorted(set(w_props) - set(r_props))}")


def _types(prop: dict) -> set[str]:
    """The JSON types a property allows (``anyOf`` branches included); empty means any."""
    found: set[str] = set()
    kind = prop.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found.update(kind)
    for branch in prop.get("anyOf", []) + prop.get("oneOf", []):
        sub = _types(branch)
        if not sub:
            return set()
        found |= sub
    return found
