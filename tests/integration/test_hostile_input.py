"""Hostile input at the real topic: every record is processed or dead-lettered, nothing crashes.

Hypothesis draws whole batches of records (random bytes, deep and large JSON, wrong types,
NaN/Infinity literals, enormous and negative values, edge timestamps, unknown fields, duplicate
and out-of-order floods) that are produced to the embedded broker and run through the real
processor and chDB. Per batch: consumed == produced, readings + dead letters == consumed, and each
dead letter carries the original bytes of a record that was produced.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from streams.runtime.runner import StreamRunner, ensure_topics
from tests.integration.conftest import make_settings
from tests.integration.helpers import produce, read_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOW_MS = int(time.time() * 1000)
_counter = iter(range(10**9))

numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # orjson's range; bigger below
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324]),
)
timestamps = st.one_of(
    st.integers(min_value=NOW_MS - 40 * 86_400_000, max_value=NOW_MS + 3_600_000),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(
        [
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "not a time",
            "",
            "9999-12-31T23:59:59.999+00:00",
            "0001-01-01T00:00:00+01:00",
        ]
    ),
    st.floats(),
)
junk = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
meter_docs = st.fixed_dictionaries(
    {
        "meter_id": st.one_of(st.sampled_from(["m1", "m2", "m3"]), st.text(max_size=140), junk),
        "ts": timestamps,
        "kw": st.one_of(numbers, junk),
    },
    optional={"voltage_v": st.one_of(numbers, junk), "quality": junk, "extra": junk},
)
raw_payloads = st.one_of(
    meter_docs.map(lambda d: orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS, default=str)),
    st.binary(max_size=300),
    st.sampled_from(
        [
            b'{"meter_id": "m1", "ts": 1, "kw": NaN}',
            b'{"meter_id": "m1", "ts": 1, "kw": Infinity}',
            b"[" * 5000 + b"]" * 5000,
            b'{"meter_id": "m1", "ts": ' + str(NOW_MS).encode() + b', "kw": 1e400}',
            b"\xff\xfe\x00garbage",
            b"null",
            b'{"meter_id": "m1", "ts": 1, "kw": 123456789012345678901234567890}',
            b'{"meter_id": "m1", "ts": 99999999999999999999999999, "kw": 1.0}',
            b"",
        ]
    ),
)


def _good(i: int) -> bytes:
    return orjson.dumps(
        {"meter_id": f"m{i % 3 + 1}", "ts": NOW_MS - (400 - i) * 900_000, "kw": 1.0 + (i % 7) * 0.1}
    )


@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is a broker run
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(payloads=st.lists(raw_payloads, min_size=20, max_size=120), floods=st.integers(0, 3))
def test_every_hostile_record_is_processed_or_dead_lettered(
    bootstrap: str, chdb_path: Path, payloads: list[bytes], floods: int
) -> None:
    unique = f"h{next(_counter)}x{time.time_ns() % 10**8}"
    s = make_settings(bootstrap, unique, chdb_path, group="hostile")
    ensure_topics(s)
    good = [_good(i) for i in range(60)]
    # duplicate and out-of-order floods of valid readings, and one big (900 KB) record
    records = (
        good
        + payloads
        + good[-10:] * floods
        + list(reversed(good[:20]))
        + [b'{"meter_id": "m1", "pad": "' + b"x" * 900_000 + b'"}']
    )
    produce(bootstrap, s.topics.meter, [(b"k", r) for r in records])
    backend = ChdbBackend(chdb_path)
    sink = ClickHouseSink(backend, s.clickhouse.database)
    sink.ensure_schema()
    stats = StreamRunner(s, clickhouse=sink).run(idle_exit_s=3.0)
    c = stats.counters
    assert c["consumed"] == len(records)
    assert c["readings"] + c["dead_letters"] - sum(
        c[k] for k in ("dead_letter_out_of_order", "dead_letter_conflicting_duplicate")
    ) == len(records)
    dead = read_all(bootstrap, s.topics.dead_letters, expect=c["dead_letters"])
    assert len(dead) == c["dead_letters"]
    produced = set(records)
    for m in dead:
        assert (m.value() or b"") in produced
        reason = dict(m.headers())["__connect.errors.exception.class.name"].decode()
        assert reason and dict(m.headers())["__connect.errors.exception.message"]
    backend.close()
