"""What reaches the sink that should not, on both backends: each has a defined outcome, a clear
message where it fails, and no lost rows."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch, ReadingBatch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_common import ClickHouseBackend
from sinks.exceptions import SinkUnavailable
from sinks.rows import MAX_ERROR_CHARS

pytestmark = pytest.mark.integration

T0 = 1_718_000_000_000


@pytest.fixture
def sink(ch_backend: ClickHouseBackend, unique: str) -> Iterator[ClickHouseSink]:
    out = ClickHouseSink(ch_backend, f"gb_{unique}")
    out.ensure_schema()
    yield out
    ch_backend.command(f"DROP DATABASE IF EXISTS `gb_{unique}`")


def scalar(sink: ClickHouseSink, sql: str) -> object:
    return sink.query(sql.replace("{db}", f"`{sink.database}`")).rows[0][0]


def reading_batch(entity: list[str], kind: list[str], value: list[float]) -> ReadingBatch:
    n = len(entity)
    nan = np.full(n, np.nan)
    return ReadingBatch(
        np.array(entity, dtype=object),
        np.array(kind, dtype=object),
        T0 + np.arange(n, dtype=np.int64) * 1000,
        np.array(value, dtype=np.float64),
        nan,
        np.array([math.inf] + [230.0] * (n - 1)),
        nan,
        nan,
        nan,
        np.array([None] * n, dtype=object),
        np.arange(n, dtype=np.int64),
    )


def forecast(entity: str, kind: str, p50: float) -> ForecastBatch:
    return ForecastBatch(
        np.array([entity], dtype=object),
        np.array([kind], dtype=object),
        np.array([T0]),
        np.array([900]),
        np.array([T0 + 900_000]),
        np.array([p50]),
        np.array([p50]),
        np.array([p50]),
        "m@1",
    )


def test_oversized_strings_are_kept_and_long_errors_shortened(sink: ClickHouseSink) -> None:
    long_id = "m-" + "x" * 10_000
    raw = bytes(range(256)) * 4096  # 1 MiB, not UTF-8
    letter = DeadLetterRecord("t", 0, 1, b"k" * 5000, raw, "oversized", "e" * 100_000, T0)
    sink.write(forecast(long_id, "meter", 1.0), [], [letter], now_ms=T0)
    assert scalar(sink, "SELECT length(entity_id) FROM {db}.forecasts") == len(long_id)
    assert scalar(sink, "SELECT length(raw) FROM {db}.dead_letters") == len(raw)
    digest = hashlib.sha256(raw).hexdigest().upper()
    assert scalar(sink, "SELECT hex(SHA256(raw)) FROM {db}.dead_letters") == digest
    error = str(scalar(sink, "SELECT error FROM {db}.dead_letters"))
    assert error.startswith("e" * MAX_ERROR_CHARS)
    assert error.endswith(f"[{100_000 - MAX_ERROR_CHARS} more characters cut by gridstream]")


def test_unknown_entity_kinds_are_stored_with_the_scada_unit(sink: ClickHouseSink) -> None:
    batch = reading_batch(["b-1", "b-1", "z-1"], ["battery", "battery", ""], [1.0, 3.0, 2.0])
    sink.write(forecast("b-1", "battery", 2.0), [], [], now_ms=T0, readings=batch)
    got = sink.query(
        f"SELECT entity_kind, unit, readings, max_load FROM `{sink.database}`.load_daily "
        "ORDER BY entity_kind"
    ).rows
    assert got == [("", "MW", 1, 2.0), ("battery", "MW", 2, 3.0)]
    assert scalar(sink, "SELECT unit FROM {db}.forecasts") == "MW"


def test_non_finite_values_are_stored_and_kept_out_of_the_views(sink: ClickHouseSink) -> None:
    batch = reading_batch(["m-1"] * 4, ["meter"] * 4, [1.0, math.nan, math.inf, 3.0])
    event = AnomalyRecord(
        "e1",
        "m-1",
        "meter",
        T0,
        math.nan,
        "critical",
        {"z": math.inf},
        ["z"],
        [{"feature": "kw", "value": math.nan, "expected": None, "deviation": math.inf}],
        {"kw": math.nan},
        {},
        T0,
    )
    sink.write(forecast("m-1", "meter", math.inf), [event], [], now_ms=T0, readings=batch)
    stored = sink.query(f"SELECT value, voltage FROM `{sink.database}`.readings ORDER BY ts").rows
    assert [v for v, _ in stored][0::3] == [1.0, 3.0] and math.isnan(stored[1][0])
    assert stored[2][0] == math.inf and stored[0][1] == math.inf  # inf is a value, not absent
    load = sink.query(f"SELECT readings, avg_load FROM `{sink.database}`.load_daily").rows
    assert load == [(2, 2.0)]  # NaN and inf left out, not poisoning the average
    assert scalar(sink, "SELECT count() FROM {db}.forecast_accuracy") == 0
    score, detectors, explanation = sink.query(
        f"SELECT score, detectors, explanation FROM `{sink.database}`.anomalies"
    ).rows[0]
    assert math.isnan(score) and detectors == {"z": math.inf}
    assert orjson.loads(explanation) == [  # JSON has no NaN: null, and still valid JSON
        {"feature": "kw", "value": None, "expected": None, "deviation": None}
    ]
    assert scalar(sink, "SELECT kind FROM {db}.anomaly_counts_daily") == "kw"


def test_too_many_parts_is_retryable_and_nothing_is_lost(sink: ClickHouseSink) -> None:
    table = f"`{sink.database}`.forecasts"
    sink.backend.command(f"SYSTEM STOP MERGES {table}")
    sink.backend.command(
        f"ALTER TABLE {table} MODIFY SETTING parts_to_throw_insert = 1, parts_to_delay_insert = 1"
    )
    sink.write(forecast("m-1", "meter", 1.0), [], [], now_ms=T0)
    with pytest.raises(SinkUnavailable) as err:  # the engine's own TOO_MANY_PARTS
        sink.write(forecast("m-2", "meter", 1.0), [], [], now_ms=T0)
    assert err.value.retryable and err.value.table == "forecasts"
    assert "Too many parts" in str(err.value)
    sink.backend.command(
        f"ALTER TABLE {table} RESET SETTING parts_to_throw_insert, parts_to_delay_insert"
    )
    sink.write(forecast("m-2", "meter", 1.0), [], [], now_ms=T0)  # the retry, merges caught up
    assert scalar(
        sink,
        "SELECT groupArray(entity_id) FROM (SELECT entity_id FROM {db}.forecasts "
        "ORDER BY entity_id)",
    ) == ["m-1", "m-2"]
