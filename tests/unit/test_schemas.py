"""The input contracts and the checked-in JSON Schema files that producers validate against."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, ValidationError

from schemas import SCHEMA_VERSION
from schemas import generate as gen
from schemas.bounds import (
    MAX_ID_LENGTH,
    MAX_QUALITY_LENGTH,
    METER_BOUNDS,
    SCADA_BOUNDS,
    SCADA_KINDS,
)
from schemas.readings import MAX_TS_MS, MIN_TS_MS, MeterReading, ScadaKind, ScadaReading

T0 = datetime(2024, 6, 1, 10, 15, tzinfo=UTC)
T0_MS = 1_717_236_900_000

METER = {"meter_id": "meter-1", "ts": T0_MS, "kw": 1.5}
SCADA = {"asset_id": "feeder-12", "asset_kind": "feeder", "ts": T0_MS, "p_mw": 4.2}
# (model, a valid record, its id field, its bounded fields)
CONTRACTS = [
    pytest.param(MeterReading, METER, "meter_id", METER_BOUNDS, id="meter"),
    pytest.param(ScadaReading, SCADA, "asset_id", SCADA_BOUNDS, id="scada"),
]


def _rejects(model: type[BaseModel], record: dict[str, object], field: str) -> None:
    """The record is refused with a ValidationError (never another exception) naming ``field``."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(record)
    assert field in {str(e["loc"][0]) for e in info.value.errors()}


# --- generated files ------------------------------------------------------------------------------


def test_checked_in_json_schema_files_match_the_models() -> None:
    drift = gen.differences()
    assert not drift, "JSON Schema files are out of date; run `make schemas`:\n" + "\n".join(drift)


def test_check_flag_fails_on_drift_and_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen.main(["--dir", str(tmp_path)]) == 0
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "forecast.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "examples" / "meter_reading.json").unlink()
    (tmp_path / "old.schema.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert gen.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "forecast.schema.json (differs)" in err
    assert "examples/meter_reading.json (missing)" in err
    assert "old.schema.json (stale)" in err
    assert "make schemas" in err
    assert gen.main(["--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "old.schema.json").exists()
    assert gen.differences(tmp_path) == []


def test_files_have_stable_formatting() -> None:
    for path in sorted(gen.JSON_DIR.glob("**/*.json")):
        text = path.read_text(encoding="utf-8")
        assert text == gen.dumps(json.loads(text)), f"{path.name}: not sorted/2-space/newline"


@pytest.mark.parametrize("name", sorted(gen.MODELS))
def test_schema_file_is_draft_2020_12_with_id_title_description(name: str) -> None:
    schema = json.loads((gen.JSON_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:gridstream:schemas:v{SCHEMA_VERSION}:{name}"
    assert schema["title"] == gen.MODELS[name].__name__
    assert schema["description"].strip()
    assert schema["type"] == "object"


@pytest.mark.parametrize("name", sorted(gen.MODELS))
def test_example_validates_against_its_model(name: str) -> None:
    text = (gen.JSON_DIR / "examples" / f"{name}.json").read_text(encoding="utf-8")
    parsed = gen.MODELS[name].model_validate_json(text)
    if name in gen.OUTPUTS:  # outputs are shown exactly as gridstream emits them
        assert parsed.model_dump(mode="json") == json.loads(text)


def test_examples_show_both_timestamp_forms() -> None:
    meter = json.loads((gen.JSON_DIR / "examples" / "meter_reading.json").read_text())
    scada = json.loads((gen.JSON_DIR / "examples" / "scada_reading.json").read_text())
    assert isinstance(meter["ts"], str) and isinstance(scada["ts"], int)


def test_dead_letter_example_carries_the_decoders_real_reason() -> None:
    doc = json.loads((gen.JSON_DIR / "examples" / "dead_letter.json").read_text())
    assert doc["error_class"] == "invalid_value"
    assert doc["error"].startswith("ts:") and "offset" in doc["error"]


def test_readings_schema_states_bounds_and_id_rules() -> None:
    schema = gen.json_schema("scada_reading")
    props = schema["properties"]
    assert props["p_mw"]["minimum"] == SCADA_BOUNDS["p_mw"][0]
    assert props["p_mw"]["maximum"] == SCADA_BOUNDS["p_mw"][1]
    assert props["asset_id"]["maxLength"] == MAX_ID_LENGTH
    assert props["asset_kind"]["enum"] == list(SCADA_KINDS)
    assert set(schema["required"]) == {"asset_id", "asset_kind", "ts", "p_mw"}


def test_scada_kind_literal_is_the_bounds_table() -> None:
    assert get_args(ScadaKind) == SCADA_KINDS


# --- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
@pytest.mark.parametrize(
    "ts",
    [
        "2024-06-01T10:15:00Z",
        "2024-06-01T10:15:00+00:00",
        "2024-06-01T12:15:00+02:00",
        "2024-06-01T05:45:00-04:30",
        "2024-06-01 10:15:00Z",
        T0_MS,
        float(T0_MS),
        T0_MS + 0.999,
    ],
)
def test_timestamp_forms_give_the_same_utc_instant(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict, ts: object
) -> None:
    parsed = model.model_validate({**record, "ts": ts}).ts
    assert parsed == T0 and parsed.utcoffset() == timedelta(0)


def test_sub_millisecond_digits_are_floored_for_epoch_numbers_and_kept_for_strings() -> None:
    assert MeterReading.model_validate({**METER, "ts": -1.5}).ts == datetime(
        1969, 12, 31, 23, 59, 59, 998000, tzinfo=UTC
    )
    text = MeterReading.model_validate({**METER, "ts": "2024-06-01T10:15:00.123456Z"})
    assert text.ts.microsecond == 123456


def test_epoch_ms_is_exact_at_the_ends_of_the_range() -> None:
    """Integer arithmetic: the last representable millisecond does not drift by float rounding."""
    latest = MeterReading.model_validate({**METER, "ts": MAX_TS_MS}).ts
    assert latest == datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    earliest = MeterReading.model_validate({**METER, "ts": MIN_TS_MS}).ts
    assert earliest == datetime(1, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
@pytest.mark.parametrize(
    "ts",
    [
        "2024-06-01T10:15:00",  # naive
        "2024-06-01",  # naive date
        "yesterday",
        "",
        "1717236900000",  # epoch ms as a string
        True,
        None,
        [T0_MS],
        {"ms": T0_MS},
        MAX_TS_MS + 1,
        MIN_TS_MS - 1,
        T0_MS * 1000,  # epoch µs: a unit mistake
        10**400,  # beyond float: must not raise OverflowError
        1e300,
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: must not raise OverflowError
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    ],
)
def test_bad_timestamps_are_rejected(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict, ts: object
) -> None:
    _rejects(model, {**record, "ts": ts}, "ts")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_epoch_ms_is_rejected(value: float) -> None:
    _rejects(MeterReading, {**METER, "ts": value}, "ts")


def test_a_timestamp_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(ValidationError) as info:
        MeterReading.model_validate({**METER, "ts": True})
    assert info.value.errors()[0]["type"] == "timestamp_type"


# --- numbers and bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
def test_ints_and_floats_are_accepted_as_numbers(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict
) -> None:
    for field in bounds:
        low, high = bounds[field]
        for value in (low, high, int(low), (low + high) / 2):
            parsed = model.model_validate({**record, field: value})
            assert getattr(parsed, field) == float(value)
            assert type(getattr(parsed, field)) is float


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
@pytest.mark.parametrize("bad", ["1.5", "", True, False, [1.0], {"v": 1.0}])
def test_numbers_reject_strings_bools_and_containers(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict, bad: object
) -> None:
    for field in bounds:
        _rejects(model, {**record, field: bad}, field)


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_numbers_reject_nan_and_inf(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict, bad: float
) -> None:
    for field in bounds:
        _rejects(model, {**record, field: bad}, field)


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
def test_bounds_are_inclusive_and_enforced(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict
) -> None:
    for field, (low, high) in bounds.items():
        model.model_validate({**record, field: low})
        model.model_validate({**record, field: high})
        _rejects(model, {**record, field: math.nextafter(low, -math.inf)}, field)
        _rejects(model, {**record, field: math.nextafter(high, math.inf)}, field)
        _rejects(model, {**record, field: 10**30}, field)
        _rejects(model, {**record, field: 10**400}, field)  # beyond float, still a clean error


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
def test_optional_channels_default_to_none_and_accept_null(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict
) -> None:
    required = {"kw", "p_mw"}
    for field in set(bounds) - required:
        assert getattr(model.model_validate(record), field) is None
        assert getattr(model.model_validate({**record, field: None}), field) is None
    for field in set(bounds) & required:
        _rejects(model, {**record, field: None}, field)
        _rejects(model, {k: v for k, v in record.items() if k != field}, field)


# --- ids, kinds, quality, extra fields ------------------------------------------------------------


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
@pytest.mark.parametrize(
    "bad",
    ["", "a\x00b", "line\nbreak", "tab\t", "\x1f", "del\x7f", "c1\x85", "\x9f", "x" * 129, 7, None],
)
def test_bad_ids_are_rejected(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict, bad: object
) -> None:
    _rejects(model, {**record, id_field: bad}, id_field)


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
@pytest.mark.parametrize("good", ["m", "x" * MAX_ID_LENGTH, "zähler/Ω-7 🌩", "a b", "\xa0"])
def test_unicode_ids_without_control_characters_are_accepted(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict, good: str
) -> None:
    assert getattr(model.model_validate({**record, id_field: good}), id_field) == good


@pytest.mark.parametrize("kind", ["pylon", "Feeder", "feeder ", "meter", "", 3, None])
def test_unknown_asset_kind_is_rejected(kind: object) -> None:
    _rejects(ScadaReading, {**SCADA, "asset_kind": kind}, "asset_kind")


def test_every_known_asset_kind_is_accepted() -> None:
    for kind in SCADA_KINDS:
        assert ScadaReading.model_validate({**SCADA, "asset_kind": kind}).asset_kind == kind


def test_quality_is_a_short_string_or_absent() -> None:
    assert MeterReading.model_validate({**METER, "quality": "q" * MAX_QUALITY_LENGTH}).quality
    assert MeterReading.model_validate({**METER, "quality": ""}).quality == ""
    _rejects(MeterReading, {**METER, "quality": "q" * (MAX_QUALITY_LENGTH + 1)}, "quality")
    _rejects(MeterReading, {**METER, "quality": 1}, "quality")


@pytest.mark.parametrize("model, record, id_field, bounds", CONTRACTS)
def test_unknown_extra_fields_are_ignored(
    model: type[BaseModel], record: dict, id_field: str, bounds: dict
) -> None:
    extra = {"firmware": "1.2", "nested": {"a": [1, None]}, "kw_raw": "1,5", "x": 10**400}
    parsed = model.model_validate({**record, **extra})
    assert parsed == model.model_validate(record)
    assert not set(extra) & set(parsed.model_dump())


def test_meter_contract_ignores_scada_fields() -> None:
    parsed = MeterReading.model_validate({**METER, "frequency_hz": "junk", "asset_kind": 3})
    assert "frequency_hz" not in parsed.model_dump()


def test_a_fixed_offset_is_normalised_to_utc() -> None:
    parsed = MeterReading.model_validate({**METER, "ts": "2024-06-01T12:15:00+02:00"})
    assert parsed.ts.tzinfo == UTC
    assert parsed.ts == T0.astimezone(timezone(timedelta(hours=2)))
