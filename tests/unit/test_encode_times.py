"""The vectorised RFC 3339 formatting agrees with the plain numpy way over the whole legal range."""

from __future__ import annotations

import numpy as np

from schemas.readings import MAX_TS_MS, MIN_TS_MS
from sinks.encode import iso_ms, rfc3339_ms


def _plain(ts_ms: np.ndarray) -> list[str]:
    text = np.datetime_as_string(ts_ms.astype("datetime64[ms]"), unit="ms")
    return np.char.add(text.astype(str), "Z").tolist()


def test_rfc3339_matches_the_plain_formatting_with_repeats_and_extremes() -> None:
    rng = np.random.default_rng(1)
    ts = rng.integers(MIN_TS_MS, MAX_TS_MS, 2000, dtype=np.int64)
    ts = np.concatenate([ts, ts[:500], [MIN_TS_MS, MAX_TS_MS, 0, 1_717_236_900_123]])
    assert rfc3339_ms(ts).tolist() == _plain(ts)
    assert rfc3339_ms(ts[-1:]).tolist() == [iso_ms(1_717_236_900_123)]


def test_rfc3339_of_nothing_is_empty() -> None:
    assert rfc3339_ms(np.empty(0, dtype=np.int64)).tolist() == []
