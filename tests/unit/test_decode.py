"""The fast batch decoder: each record accounted for once, same verdict as the pydantic contract."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.batch import DecodedBatch
from schemas.bounds import (
    ENTITY_KINDS,
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    METER_BOUNDS,
    SCADA_BOUNDS,
    SCADA_KINDS,
)
from schemas.decode import decode_batch
from schemas.outputs import ErrorClass
from schemas.readings import EPOCH, MAX_TS_MS, MIN_TS_MS, MeterReading, ScadaReading

NOW = 1_717_236_900_000  # 2024-06-01T10:15:00Z
HOUR = 3_600_000
MS = timedelta(milliseconds=1)
WINDOW = {"now_ms": NOW, "max_age_ms": 24 * HOUR, "max_future_ms": HOUR}
# Wide enough for every representable timestamp: the agreement property ignores the time window.
NO_WINDOW = {"now_ms": 0, "max_age_ms": 2**62, "max_future_ms": 2**62}
ERROR_CLASSES = set(get_args(ErrorClass))
MODELS: dict[str, type[MeterReading] | type[ScadaReading]] = {
    "meter": MeterReading,
    "scada": ScadaReading,
}

METER = {"meter_id": "meter-1", "ts": NOW, "kw": 1.5}
SCADA = {"asset_id": "feeder-12", "asset_kind": "feeder", "ts": NOW, "p_mw": 4.2}


def enc(record: object) -> bytes:
    """JSON as a producer might write it (any size of int; NaN/inf cannot be written)."""
    return json.dumps(record, allow_nan=False).encode()


def decode(
    values: Sequence[bytes | None], contracts: Sequence[str] | str = "meter", **window: int
) -> DecodedBatch:
    if isinstance(contracts, str):
        contracts = [contracts] * len(values)
    out = decode_batch(values, contracts, **(window or WINDOW))
    assert_accounted(out, len(values))
    return out


def assert_accounted(out: DecodedBatch, n: int) -> None:
    """Every record is in exactly one place; columns line up; rejections are ordered and named."""
    r = out.readings
    assert len(r) + len(out.rejections) == n
    accepted = [int(i) for i in r.src_index]
    rejected = [x.src_index for x in out.rejections]
    assert set(accepted).isdisjoint(rejected)
    assert set(accepted) | set(rejected) == set(range(n))
    assert rejected == sorted(rejected) and len(set(rejected)) == len(rejected)
    assert accepted == sorted(accepted)  # arrival order kept
    for x in out.rejections:
        assert x.error_class in ERROR_CLASSES
        assert isinstance(x.error, str) and x.error
    for name, dtype in DTYPES.items():
        column = getattr(r, name)
        assert column.dtype == dtype, name
        assert column.shape == (len(r),), name
    assert set(r.kind) <= set(ENTITY_KINDS)
    assert all(type(e) is str and e for e in r.entity)


DTYPES = {
    "entity": np.dtype(object),
    "kind": np.dtype(object),
    "ts_ms": np.dtype(np.int64),
    "value": np.dtype(np.float64),
    "reactive": np.dtype(np.float64),
    "voltage": np.dtype(np.float64),
    "current": np.dtype(np.float64),
    "frequency": np.dtype(np.float64),
    "temperature": np.dtype(np.float64),
    "quality": np.dtype(object),
    "src_index": np.dtype(np.int64),
}


def only_rejection(values: list[bytes | None], contract: str = "meter", **window: int) -> Any:
    out = decode(values, contract, **window)
    assert len(out.readings) == 0
    (rejection,) = out.rejections
    return rejection


# --- example-based: one per error class -----------------------------------------------------------


def test_oversized_is_rejected_unparsed_and_the_limit_is_inclusive() -> None:
    def padded(size: int) -> bytes:
        head = enc({**METER, "pad": ""})[:-2]
        return head + b"x" * (size - len(head) - 2) + b'"}'

    at_limit, over = padded(MAX_MESSAGE_BYTES), padded(MAX_MESSAGE_BYTES + 1)
    assert (len(at_limit), len(over)) == (MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1)
    out = decode([at_limit, over])
    assert list(out.readings.src_index) == [0]
    (rejection,) = out.rejections
    assert (rejection.src_index, rejection.error_class) == (1, "oversized")
    assert str(MAX_MESSAGE_BYTES + 1) in rejection.error


@pytest.mark.parametrize(
    "raw",
    [
        None,  # tombstone
        b"",
        b"{",
        b'{"meter_id": "m", "ts": 1, "kw": 1,}',
        b'{"meter_id": "\xff\xfe", "ts": 1, "kw": 1}',  # invalid UTF-8
        b'{"meter_id": "m", "ts": 1, "kw": NaN}',  # not JSON
        b'{"meter_id": "m", "ts": 1, "kw": Infinity}',
        b'{"meter_id": "m", "ts": 1, "kw": 1e400}',  # beyond double: orjson's documented limit
        b'{"meter_id": "\\ud800", "ts": 1, "kw": 1}',  # lone surrogate
        b"\xef\xbb\xbf{}",  # byte order mark
        b"[" * 2000 + b"]" * 2000,  # nesting deeper than the parser allows
    ],
)
def test_malformed_json(raw: bytes | None) -> None:
    rejection = only_rejection([raw])
    assert rejection.error_class == "malformed_json"
    if raw is None:
        assert "tombstone" in rejection.error


def test_non_finite_numbers_never_reach_validation() -> None:
    """``not_finite`` is unreachable from JSON: orjson refuses NaN/Infinity/1e400 outright."""
    for token in (b"NaN", b"-Infinity", b"1e400", b"-1e999"):
        raw = b'{"meter_id":"m","ts":%d,"kw":%s}' % (NOW, token)
        assert only_rejection([raw]).error_class == "malformed_json"


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b"1", b'"meter"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert only_rejection([raw]).error_class == "not_an_object"


@pytest.mark.parametrize(
    "contract, record, field",
    [
        ("meter", {"ts": NOW, "kw": 1.0}, "meter_id"),
        ("meter", {"meter_id": "m", "kw": 1.0}, "ts"),
        ("meter", {"meter_id": "m", "ts": NOW}, "kw"),
        ("scada", {"asset_id": "f", "ts": NOW, "p_mw": 1.0}, "asset_kind"),
        ("scada", {"asset_id": "f", "asset_kind": "feeder", "ts": NOW}, "p_mw"),
        ("scada", METER, "asset_id"),  # a meter reading on the SCADA topic
    ],
)
def test_missing_field(contract: str, record: dict, field: str) -> None:
    rejection = only_rejection([enc(record)], contract)
    assert rejection.error_class == "missing_field"
    assert rejection.error.startswith(f"{field}:")


@pytest.mark.parametrize(
    "contract, patch, field",
    [
        ("meter", {"kw": "1.5"}, "kw"),
        ("meter", {"kw": True}, "kw"),
        ("meter", {"kw": None}, "kw"),
        ("meter", {"kvar": "0.2"}, "kvar"),
        ("meter", {"voltage_v": False}, "voltage_v"),
        ("meter", {"current_a": [1.0]}, "current_a"),
        ("meter", {"meter_id": 17}, "meter_id"),
        ("meter", {"ts": True}, "ts"),
        ("meter", {"ts": [NOW]}, "ts"),
        ("meter", {"quality": 3}, "quality"),
        ("scada", {"p_mw": {"v": 1}}, "p_mw"),
        ("scada", {"frequency_hz": "50"}, "frequency_hz"),
        ("scada", {"asset_id": None}, "asset_id"),
    ],
)
def test_invalid_type(contract: str, patch: dict, field: str) -> None:
    base = METER if contract == "meter" else SCADA
    rejection = only_rejection([enc({**base, **patch})], contract)
    assert rejection.error_class == "invalid_type"
    assert rejection.error.startswith(f"{field}:")


@pytest.mark.parametrize(
    "contract, patch, field",
    [
        ("meter", {"meter_id": ""}, "meter_id"),
        ("meter", {"meter_id": "m\n1"}, "meter_id"),
        ("meter", {"meter_id": "m\x7f"}, "meter_id"),
        ("meter", {"meter_id": "m" * (MAX_ID_LENGTH + 1)}, "meter_id"),
        ("meter", {"ts": "2024-06-01T10:15:00"}, "ts"),  # naive
        ("meter", {"ts": "soon"}, "ts"),
        ("meter", {"ts": NOW * 1000}, "ts"),  # epoch µs
        ("meter", {"ts": 2**63}, "ts"),  # beyond int64
        ("meter", {"ts": "0001-01-01T00:00:00+01:00"}, "ts"),  # before year 1 in UTC
        ("meter", {"quality": "q" * 33}, "quality"),
        ("scada", {"asset_kind": "pylon"}, "asset_kind"),
        ("scada", {"asset_kind": "meter"}, "asset_kind"),
    ],
)
def test_invalid_value(contract: str, patch: dict, field: str) -> None:
    base = METER if contract == "meter" else SCADA
    rejection = only_rejection([enc({**base, **patch})], contract)
    assert rejection.error_class == "invalid_value"
    assert rejection.error.startswith(f"{field}:")


@pytest.mark.parametrize(
    "contract, field, bounds",
    [("meter", f, METER_BOUNDS) for f in METER_BOUNDS]
    + [("scada", f, SCADA_BOUNDS) for f in SCADA_BOUNDS],
)
def test_out_of_range_per_channel_with_inclusive_bounds(
    contract: str, field: str, bounds: dict[str, tuple[float, float]]
) -> None:
    base = METER if contract == "meter" else SCADA
    low, high = bounds[field]
    values = [
        enc({**base, field: low}),
        enc({**base, field: high}),
        enc({**base, field: math.nextafter(low, -math.inf)}),
        enc({**base, field: math.nextafter(high, math.inf)}),
        enc({**base, field: 10**30}),
    ]
    out = decode(values, contract)
    assert list(out.readings.src_index) == [0, 1]
    assert [x.src_index for x in out.rejections] == [2, 3, 4]
    for x in out.rejections:
        assert x.error_class == "out_of_range"
        assert x.error.startswith(f"{field}:")
        assert str(low) in x.error and str(high) in x.error


def test_out_of_range_reports_the_first_bad_channel_in_contract_order() -> None:
    rejection = only_rejection(
        [enc({**SCADA, "frequency_hz": 99.0, "temperature_c": 999.0})], "scada"
    )
    assert rejection.error.startswith("frequency_hz:")


def test_timestamp_window_is_inclusive_at_both_ends() -> None:
    oldest, newest = NOW - WINDOW["max_age_ms"], NOW + WINDOW["max_future_ms"]
    values = [enc({**METER, "ts": t}) for t in (oldest, newest, oldest - 1, newest + 1)]
    out = decode(values)
    assert list(out.readings.ts_ms) == [oldest, newest]
    too_old, in_future = out.rejections
    assert (too_old.src_index, too_old.error_class) == (2, "timestamp_too_old")
    assert (in_future.src_index, in_future.error_class) == (3, "timestamp_in_future")
    assert too_old.error.startswith("ts:") and in_future.error.startswith("ts:")


@pytest.mark.parametrize(
    "ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 10**400, -(10**400)]
)
def test_timestamps_that_overflow_datetime_are_rejected_not_raised(ts: object) -> None:
    """A second bad field sends the record to the contract for its reason; that must not raise."""
    for extra in ({}, {"kw": "x"}):
        rejection = only_rejection([enc({**METER, "ts": ts, **extra})], **NO_WINDOW)
        assert rejection.error_class in {"invalid_value", "invalid_type", "malformed_json"}
        if rejection.error_class != "malformed_json":  # 10**400 is beyond what orjson reads
            assert rejection.error.startswith("ts:")


def test_out_of_range_wins_over_a_bad_timestamp_window() -> None:
    rejection = only_rejection([enc({**METER, "kw": 1e9, "ts": NOW + 10 * HOUR})])
    assert rejection.error_class == "out_of_range"


# --- accounting, columns, mixing ------------------------------------------------------------------


def test_rejections_are_sorted_and_everything_is_accounted_for() -> None:
    values = [
        enc({**METER, "ts": NOW - 48 * HOUR}),  # window rejection (found last, vectorised)
        None,
        enc(METER),
        enc({**METER, "kw": 1e9}),  # range rejection (vectorised)
        b"[]",
        enc({**METER, "kw": "x"}),  # fast-path rejection
        enc(METER),
    ]
    out = decode(values)
    assert [x.src_index for x in out.rejections] == [0, 1, 3, 4, 5]
    assert list(out.readings.src_index) == [2, 6]


def test_empty_batch() -> None:
    out = decode([])
    assert len(out.readings) == 0 and out.rejections == []


def test_meters_and_scada_mixed_in_one_batch() -> None:
    meter = {**METER, "kvar": -0.3, "voltage_v": 231.0, "current_a": 6.5, "quality": "good"}
    scada = {
        **SCADA,
        "q_mvar": 1.1,
        "voltage_kv": 11.0,
        "current_a": 250.0,
        "frequency_hz": 49.95,
        "temperature_c": 41.0,
        "quality": "est",
    }
    out = decode([enc(meter), enc(scada), enc(METER)], ["meter", "scada", "meter"])
    r = out.readings
    assert list(r.entity) == ["meter-1", "feeder-12", "meter-1"]
    assert list(r.kind) == ["meter", "feeder", "meter"]
    assert list(r.value) == [1.5, 4.2, 1.5]
    assert r.reactive[:2].tolist() == [-0.3, 1.1]
    assert r.voltage[:2].tolist() == [231.0, 11.0]
    assert r.current[:2].tolist() == [6.5, 250.0]
    assert r.frequency[1] == 49.95 and r.temperature[1] == 41.0
    assert list(r.quality) == ["good", "est", None]


def test_optional_channels_are_nan_when_absent_or_null() -> None:
    explicit_null = {**SCADA, "q_mvar": None, "voltage_kv": None, "quality": None}
    meter_with_scada_fields = {**METER, "frequency_hz": 50.0, "temperature_c": 20.0}
    out = decode(
        [enc(SCADA), enc(explicit_null), enc(meter_with_scada_fields)], ["scada", "scada", "meter"]
    )
    r = out.readings
    for name in ("reactive", "voltage", "current", "frequency", "temperature"):
        assert np.isnan(getattr(r, name)).all(), name
    assert list(r.quality) == [None, None, None]


def test_ints_become_float_columns_and_extra_fields_are_ignored() -> None:
    out = decode([enc({**METER, "kw": 3, "kvar": -1, "firmware": {"v": [1, 2]}})])
    assert out.readings.value.tolist() == [3.0] and out.readings.reactive.tolist() == [-1.0]


def test_rfc3339_and_epoch_ms_give_the_same_ts_ms() -> None:
    forms = [
        NOW,
        float(NOW),
        NOW + 0.999,  # a fraction of a millisecond is floored
        "2024-06-01T10:15:00Z",
        "2024-06-01T10:15:00+00:00",
        "2024-06-01T12:15:00+02:00",
        "2024-06-01T04:45:00-05:30",
        "2024-06-01T10:15:00.000999Z",
    ]
    out = decode([enc({**METER, "ts": ts}) for ts in forms])
    assert out.readings.ts_ms.tolist() == [NOW] * len(forms)


def test_ts_floors_before_1970_and_is_exact_at_the_ends_of_the_range() -> None:
    values = [
        enc({**METER, "ts": t}) for t in (-1.5, "1969-12-31T23:59:59.9995Z", MAX_TS_MS, MIN_TS_MS)
    ]
    out = decode(values, **NO_WINDOW)
    assert out.readings.ts_ms.tolist() == [-2, -1, MAX_TS_MS, MIN_TS_MS]


def test_a_repeated_timestamp_string_decodes_the_same_every_time() -> None:
    out = decode([enc({**METER, "ts": "2024-06-01T12:15:00+02:00"})] * 3)
    assert out.readings.ts_ms.tolist() == [NOW] * 3


def test_contracts_must_match_the_values() -> None:
    with pytest.raises(ValueError, match="contracts"):
        decode_batch([enc(METER)], [], **WINDOW)
    with pytest.raises(ValueError, match="unknown contracts"):
        decode_batch([None], ["pmu"], **WINDOW)


# --- property: agreement with the pydantic contract -----------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
big_ints = st.integers(-(10**300), 10**300)
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


# Each field has a "good" strategy (mostly accepted) and a "bad" one (mostly rejected); a record
# corrupts at most a couple of fields, so accepted records are common enough to compare values.
Field = tuple[st.SearchStrategy[object], st.SearchStrategy[object]]


def numbers(low: float, high: float) -> Field:
    edges = [
        low,
        high,
        math.nextafter(low, -math.inf),
        math.nextafter(high, math.inf),
        int(low),
        int(high),
        int(high) + 1,
        0,
        -0.0,
        5e-324,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        2**63,
        2**64,
        -(2**63) - 1,
        10**30,
    ]
    good = st.floats(low, high) | st.integers(math.ceil(low), math.floor(high))
    bad = st.sampled_from(edges) | finite | big_ints | st.booleans() | st.text(max_size=6) | junk
    return good, bad


offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
aware = st.builds(lambda dt, tz: dt.replace(tzinfo=tz), st.datetimes(), offsets)
rfc3339 = st.one_of(
    aware.map(datetime.isoformat),
    aware.map(lambda d: d.isoformat().replace("+00:00", "Z")),
    aware.map(lambda d: d.isoformat(sep=" ", timespec="milliseconds")),
)
timestamps: Field = (
    st.integers(MIN_TS_MS, MAX_TS_MS) | st.floats(MIN_TS_MS, MAX_TS_MS) | rfc3339,
    st.one_of(
        st.sampled_from(
            [MIN_TS_MS, MAX_TS_MS, MIN_TS_MS - 1, MAX_TS_MS + 1, MAX_TS_MS + 0.5, MIN_TS_MS - 0.5]
            + [2**63, 2**64, -(2**63) - 1, NOW * 1000, NOW * 1_000_000, 1e300, -1e300]
            + ["0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59.999999-00:01", "2024-06-01"]
        ),
        st.datetimes().map(datetime.isoformat),  # naive
        big_ints,
        finite,
        st.text(max_size=30),
        junk,
    ),
)
ids: Field = (
    st.text(min_size=1, max_size=30) | st.from_regex(r"[a-z]{1,8}-[0-9]{1,6}", fullmatch=True),
    st.one_of(
        st.text(max_size=MAX_ID_LENGTH + 3),
        st.integers(MAX_ID_LENGTH - 2, MAX_ID_LENGTH + 2).map(lambda n: "m" * n),
        st.sampled_from(["", "a\x7f", "b\x85", "\x9f", "\xa0", "x\x00", "zähler 🌩", "a\u2028b"]),
        junk,
    ),
)
quality: Field = (st.none() | st.text(max_size=32), st.text(min_size=30, max_size=34) | junk)
asset_kinds: Field = (
    st.sampled_from(SCADA_KINDS),
    st.sampled_from(["meter", "Feeder", "feeder ", ""]) | junk,
)
extras = st.dictionaries(st.text(max_size=12), junk | big_ints | finite, max_size=3)

# contract -> field -> (required, (good, bad))
SPECS: dict[str, dict[str, tuple[bool, Field]]] = {
    "meter": {
        "meter_id": (True, ids),
        "ts": (True, timestamps),
        **{f: (f == "kw", numbers(*METER_BOUNDS[f])) for f in METER_BOUNDS},
        "quality": (False, quality),
    },
    "scada": {
        "asset_id": (True, ids),
        "asset_kind": (True, asset_kinds),
        "ts": (True, timestamps),
        **{f: (f == "p_mw", numbers(*SCADA_BOUNDS[f])) for f in SCADA_BOUNDS},
        "quality": (False, quality),
    },
}


@st.composite
def records(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    contract = draw(st.sampled_from(["meter", "scada"]))
    spec = SPECS[contract]
    corrupt = draw(st.sets(st.sampled_from(sorted(spec)), max_size=2))
    record: dict[str, object] = {}
    for name, (required, (good, bad)) in spec.items():
        if name in corrupt:
            if draw(st.integers(0, 4)) > 0:  # else: leave it out
                record[name] = draw(bad)
        elif required or draw(st.booleans()):
            record[name] = draw(good)
    for key, value in draw(extras).items():
        record.setdefault(key, value)
    return contract, record


def contract_verdict(
    contract: str, record: dict[str, object]
) -> tuple[MeterReading | ScadaReading | None, Any]:
    try:
        return MODELS[contract].model_validate(record), None
    except ValidationError as exc:
        return None, exc.errors()[0]


def expected_class(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing_field"
    if kind in ("greater_than_equal", "less_than_equal"):
        return "out_of_range"
    if kind == "finite_number":
        return "not_finite"
    return "invalid_type" if kind.endswith("_type") else "invalid_value"


def channel(model: BaseModel, field: str | None) -> float:
    value = None if field is None else getattr(model, field)
    return math.nan if value is None else value


CHANNELS = {
    "meter": ("meter_id", "kw", ("kvar", "voltage_v", "current_a", None, None)),
    "scada": (
        "asset_id",
        "p_mw",
        ("q_mvar", "voltage_kv", "current_a", "frequency_hz", "temperature_c"),
    ),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(records(), min_size=1, max_size=8), ascii_only=st.booleans())
def test_fast_decoder_agrees_with_the_pydantic_contract(
    batch: list[tuple[str, dict[str, object]]], ascii_only: bool
) -> None:
    # Python's json writes any int and escapes what orjson might not; it round-trips these records.
    values = [
        json.dumps(rec, allow_nan=False, ensure_ascii=ascii_only).encode() for _, rec in batch
    ]
    contracts = [contract for contract, _ in batch]
    out = decode(values, contracts, **NO_WINDOW)
    rows = {int(i): row for row, i in enumerate(out.readings.src_index)}
    rejections = {x.src_index: x for x in out.rejections}
    r = out.readings
    for i, (contract, record) in enumerate(batch):
        model, error = contract_verdict(contract, record)
        if model is None:
            assert i in rejections, f"decoder accepted what the contract rejects: {error}"
            rejection = rejections[i]
            event(f"rejected: {rejection.error_class}")
            assert rejection.error_class == expected_class(error), (rejection, error)
            field = ".".join(map(str, error["loc"]))
            assert rejection.error.startswith(f"{field}:"), (rejection, error)
            continue
        assert i in rows, f"decoder rejected what the contract accepts: {rejections.get(i)}"
        event("accepted")
        row = rows[i]
        id_field, value_field, channel_fields = CHANNELS[contract]
        assert r.entity[row] == getattr(model, id_field)
        assert r.kind[row] == (getattr(model, "asset_kind", None) or "meter")
        assert r.ts_ms[row] == (model.ts - EPOCH) // MS  # floored, as documented
        assert r.value[row] == getattr(model, value_field)
        for column, field in zip(
            ("reactive", "voltage", "current", "frequency", "temperature"),
            channel_fields,
            strict=True,
        ):
            np.testing.assert_equal(getattr(r, column)[row], channel(model, field), err_msg=column)
        assert r.quality[row] == model.quality


# --- property: totality over arbitrary bytes ------------------------------------------------------


@st.composite
def raw_values(draw: st.DrawFn) -> bytes | None:
    choice = draw(st.integers(0, 7))
    if choice == 0:
        return None
    if choice == 1:
        return draw(st.binary(max_size=300))
    if choice == 2:  # a plausible record with one byte corrupted (often invalid UTF-8)
        data = bytearray(enc({**METER, "quality": draw(st.text(max_size=10))}))
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if choice == 3:  # deep nesting, inside and outside a record
        depth = draw(st.integers(1, 5000))
        nested = b"[" * depth + b"]" * depth
        return draw(
            st.sampled_from([nested, b'{"meter_id":"m","ts":1,"kw":1,"x":' + nested + b"}"])
        )
    if choice == 4:  # sizes around the 64 KiB limit and beyond
        size = draw(st.integers(MAX_MESSAGE_BYTES - 40, 3 * MAX_MESSAGE_BYTES))
        head = enc({**METER, "pad": ""})[:-2]
        return head + b"x" * max(0, size - len(head) - 2) + b'"}'
    if choice == 5:
        return draw(
            st.sampled_from([b"NaN", b"1e400", b"-0", b"null", b"{}", b'""', b"\xef\xbb\xbf{}"])
        )
    _, record = draw(records())
    return json.dumps(record, allow_nan=False).encode()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    values=st.lists(raw_values(), max_size=10),
    data=st.data(),
    now_ms=st.integers(-(2**50), 2**50),
    max_age_ms=st.integers(0, 2**50),
    max_future_ms=st.integers(0, 2**50),
)
def test_decoder_is_total_over_arbitrary_bytes(
    values: list[bytes | None],
    data: st.DataObject,
    now_ms: int,
    max_age_ms: int,
    max_future_ms: int,
) -> None:
    contracts = data.draw(
        st.lists(st.sampled_from(["meter", "scada"]), min_size=len(values), max_size=len(values))
    )
    out = decode_batch(
        values, contracts, now_ms=now_ms, max_age_ms=max_age_ms, max_future_ms=max_future_ms
    )
    assert_accounted(out, len(values))
    for x in out.rejections:
        assert "not by the contract" not in x.error and "contract raised" not in x.error
        if values[x.src_index] is not None and len(values[x.src_index]) > MAX_MESSAGE_BYTES:
            assert x.error_class == "oversized"
