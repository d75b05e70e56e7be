"""Write the JSON Schema files and an example document per contract: ``python -m schemas.generate``.

Producers and consumers outside Python validate against these files, so they are generated from
the pydantic models (never edited by hand) and checked in. ``--check`` rewrites nothing and exits
non-zero naming every file that differs from what the models generate now, so CI catches drift.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from schemas import SCHEMA_VERSION
from schemas.decode import decode_batch
from schemas.exceptions import ContractError
from schemas.outputs import AnomalyEvent, DeadLetter, Forecast, LabelledAnomaly, stable_id
from schemas.readings import MeterReading, ScadaReading
from schemas.topology import TopologyLink

DIALECT = "https://json-schema.org/draft/2020-12/schema"
JSON_DIR = Path(__file__).resolve().parent / "json"

MODELS: dict[str, type[BaseModel]] = {
    "meter_reading": MeterReading,
    "scada_reading": ScadaReading,
    "forecast": Forecast,
    "anomaly_event": AnomalyEvent,
    "dead_letter": DeadLetter,
    "labelled_anomaly": LabelledAnomaly,
    "topology_link": TopologyLink,
}
# Output contracts are what gridstream emits, so their examples are in the emitted (canonical) form.
OUTPUTS = frozenset({"forecast", "anomaly_event", "dead_letter", "labelled_anomaly"})


def _dead_letter_example() -> dict[str, object]:
    """A real rejection: the error text is what the decoder says today, so the example is true."""
    raw = b'{"meter_id":"meter-000417","ts":"2024-06-01T12:15:00","kw":3.42}'
    (rejection,) = decode_batch(
        [raw], ["meter"], now_ms=1_717_236_900_000, max_age_ms=86_400_000, max_future_ms=60_000
    ).rejections
    return {
        "source_topic": "gridstream.readings.meter",
        "source_partition": 3,
        "source_offset": 1048576,
        "key": base64.b64encode(b"meter-000417").decode(),
        "raw": base64.b64encode(raw).decode(),
        "error_class": rejection.error_class,
        "error": rejection.error,
        "dead_lettered_at": "2024-06-01T10:15:02.031000Z",
    }


def examples() -> dict[str, dict[str, object]]:
    """One realistic document per contract; inputs show both ``ts`` forms (RFC 3339, epoch ms)."""
    return {
        "meter_reading": {
            "meter_id": "meter-000417",
            "ts": "2024-06-01T12:15:00+02:00",
            "kw": 3.42,
            "kvar": 0.61,
            "voltage_v": 231.4,
            "current_a": 14.9,
            "quality": "good",
        },
        "scada_reading": {
            "asset_id": "feeder-12",
            "asset_kind": "feeder",
            "ts": 1717236900000,
            "p_mw": 4.87,
            "q_mvar": 1.12,
            "voltage_kv": 11.02,
            "current_a": 262.0,
            "frequency_hz": 49.98,
            "temperature_c": 41.5,
            "quality": "good",
        },
        "forecast": {
            "entity_id": "feeder-12",
            "entity_kind": "feeder",
            "issued_at": "2024-06-01T10:15:00Z",
            "horizon_s": 900,
            "target_ts": "2024-06-01T10:30:00Z",
            "p10": 4.41,
            "p50": 4.92,
            "p90": 5.47,
            "unit": "MW",
            "model": "nowcast@3",
        },
        "anomaly_event": {
            "event_id": stable_id("feeder", "feeder-12", 1717236900000),
            "entity_id": "feeder-12",
            "entity_kind": "feeder",
            "ts": "2024-06-01T10:15:00Z",
            "score": 0.93,
            "severity": "critical",
            "detectors": {"forecast_residual": 0.91, "half_space_trees": 0.74, "robust_z": 0.97},
            "fired": ["robust_z", "forecast_residual"],
            "explanation": [
                {"feature": "value", "value": 0.0, "expected": 4.9, "deviation": -8.7},
                {"feature": "value_delta_1", "value": -4.87, "expected": 0.02, "deviation": -7.9},
            ],
            "reading": {"p_mw": 0.0, "q_mvar": 0.0, "voltage_kv": 11.01, "quality": "good"},
            "model_versions": {"ensemble": "grid-ensemble@3", "online": "river-hst@1"},
            "detected_at": "2024-06-01T10:15:01.204000Z",
        },
        "dead_letter": _dead_letter_example(),
        "labelled_anomaly": {
            "entity_id": "meter-000417",
            "entity_kind": "meter",
            "kind": "drop_to_zero",
            "start_ts": "2024-06-01T10:00:00Z",
            "end_ts": "2024-06-01T10:30:00Z",
        },
        "topology_link": {
            "child_id": "meter-000417",
            "child_kind": "meter",
            "parent_id": "tx-0012",
            "parent_kind": "transformer",
            "valid_from": "2024-06-01T00:00:00Z",
        },
    }


def json_schema(name: str) -> dict[str, object]:
    """The model's validation schema, with the dialect and a stable ``$id`` (versioned contract)."""
    model = MODELS[name]
    schema = model.model_json_schema()
    if not schema.get("description"):
        raise ContractError(f"{model.__name__} needs a docstring: it becomes the description")
    schema["$schema"] = DIALECT
    schema["$id"] = f"urn:gridstream:schemas:v{SCHEMA_VERSION}:{name}"
    return schema


def dumps(document: object) -> str:
    """Stable formatting, so a diff shows only real contract changes."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every generated file, path relative to ``schemas/json`` -> content.

    Raises ``ContractError`` if an example does not validate against its model.
    """
    files: dict[str, str] = {}
    docs = examples()
    for name, model in MODELS.items():
        files[f"{name}.schema.json"] = dumps(json_schema(name))
        text = dumps(docs[name])
        try:
            model.model_validate_json(text)
        except ValueError as exc:
            raise ContractError(f"example {name} does not validate: {exc}") from exc
        files[f"examples/{name}.json"] = text
    return files


def _on_disk(directory: Path) -> set[str]:
    found = list(directory.glob("*.schema.json")) + list(directory.glob("examples/*.json"))
    return {p.relative_to(directory).as_posix() for p in found}


def differences(directory: Path = JSON_DIR) -> list[str]:
    """Files that are missing, differ from the models, or are no longer generated (stale)."""
    expected = render()
    out = []
    for rel, text in expected.items():
        path = directory / rel
        if not path.is_file():
            out.append(f"{rel} (missing)")
        elif path.read_text(encoding="utf-8") != text:
            out.append(f"{rel} (differs)")
    out.extend(f"{rel} (stale)" for rel in sorted(_on_disk(directory) - expected.keys()))
    return out


def write(directory: Path = JSON_DIR) -> list[str]:
    """Bring the directory in line with the models; returns what changed."""
    expected = render()
    changed = []
    for rel, text in expected.items():
        path = directory / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(rel)
    for rel in sorted(_on_disk(directory) - expected.keys()):
        (directory / rel).unlink()
        changed.append(f"{rel} (removed)")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    parser.add_argument("--dir", type=Path, default=JSON_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        drift = differences(args.dir)
        if drift:
            print("JSON Schema files out of date (run `make schemas`):", file=sys.stderr)
            for line in drift:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"{len(MODELS)} schemas and examples up to date in {args.dir}")
        return 0
    changed = write(args.dir)
    for line in changed:
        print(f"wrote {line}")
    print(f"{len(changed)} file(s) changed in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
