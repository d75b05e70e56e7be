"""Metric names and the batch histogram, and the bounded forecast-error join."""

from __future__ import annotations

import re

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.accuracy import ACTUAL_TOLERANCE_S
from streams.ops.accuracy import ForecastAccuracy
from streams.ops.metrics import BatchHistogram, GridMetrics

NAME = re.compile(r"^gridstream_[a-z][a-z0-9_]*$")


def families(registry: CollectorRegistry) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_every_metric_is_prefixed_and_follows_conventions() -> None:
    metrics = GridMetrics(CollectorRegistry())
    metrics.bind(health_level=lambda: 0.0)
    fams = families(metrics.registry)
    assert fams, "nothing exported"
    for name, fam in fams.items():
        assert NAME.match(name), name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), name
        if name.endswith("_seconds") or name.endswith("_bytes"):
            assert fam.type in ("gauge", "histogram", "counter"), name
    # the process collector is namespaced too: memory alerts read this
    assert "gridstream_process_resident_memory_bytes" in fams
    assert "gridstream_drift_events" in fams  # exists from the start, at 0


def test_registries_are_independent() -> None:
    a, b = GridMetrics(CollectorRegistry()), GridMetrics(CollectorRegistry())
    a.consumed.labels("t").inc(5)
    assert b.registry.get_sample_value("gridstream_readings_consumed_total", {"topic": "t"}) is None
    assert a.registry.get_sample_value("gridstream_readings_consumed_total", {"topic": "t"}) == 5


def test_model_set_can_be_replaced() -> None:
    m = GridMetrics(CollectorRegistry())
    m.set_models({"nowcast": "a@1", "online": "b@2"})
    m.set_models({"ensemble": "c@3"})
    r = m.registry
    assert r.get_sample_value("gridstream_models_loaded") == 1
    assert r.get_sample_value("gridstream_model_info", {"model": "ensemble", "version": "c@3"})
    assert (
        r.get_sample_value("gridstream_model_info", {"model": "nowcast", "version": "a@1"}) is None
    )


@pytest.mark.parametrize(
    "values",
    [
        [0.0, 0.1, 0.5, 1.0, 1.0000001, 2.0, 7.0, 100.0],
        list(np.random.default_rng(3).exponential(2.0, 1000)),
    ],
)
def test_batch_histogram_equals_prometheus_histogram(values: list[float]) -> None:
    buckets = (0.1, 0.5, 1.0, 2.0, 5.0)
    registry = CollectorRegistry()
    ours = BatchHistogram("a_seconds", "doc", buckets, registry=registry)
    theirs = Histogram("b_seconds", "doc", buckets=buckets, registry=registry)
    ours.observe_many(np.array(values))
    for v in values:
        theirs.observe(v)
    fams = families(registry)
    a = [(s.labels["le"], s.value) for s in fams["a_seconds"].samples if s.name.endswith("bucket")]
    b = [(s.labels["le"], s.value) for s in fams["b_seconds"].samples if s.name.endswith("bucket")]
    assert a == b
    assert registry.get_sample_value("a_seconds_sum") == pytest.approx(
        registry.get_sample_value("b_seconds_sum")
    )
    assert registry.get_sample_value("a_seconds_count") == len(values)


def test_batch_histogram_skips_non_finite_and_checks_labels() -> None:
    h = BatchHistogram("x", "doc", (1.0,), labelnames=("horizon_s",))
    h.observe_many(np.array([np.nan, np.inf, 0.5]), horizon_s="900")
    assert h.totals(horizon_s="900") == (1, 0.5)
    assert h.totals(horizon_s="3600") == (0, 0.0)
    with pytest.raises(ValueError, match="labels"):
        h.observe_many(np.array([1.0]), other="x")


# -- forecast error ----------------------------------------------------------------------------
STEP = 900_000


def feed(
    acc: ForecastAccuracy,
    entity: list[str],
    ts: list[int],
    value: list[float],
    fc: list[tuple[int, int, float]],
) -> dict[int, np.ndarray]:
    """One batch: readings, and forecasts as (reading row, horizon_s, p50)."""
    rows = np.array([r for r, _, _ in fc], dtype=np.int64)
    horizon = np.array([h for _, h, _ in fc], dtype=np.int64)
    target = np.array([ts[r] + h * 1000 for r, h, _ in fc], dtype=np.int64)
    p50 = np.array([p for _, _, p in fc], dtype=np.float64)
    return acc.update(
        np.array(entity, dtype=object),
        np.array(ts, dtype=np.int64),
        np.array(value, dtype=np.float64),
        np.ones(len(ts), dtype=bool),
        rows,
        horizon,
        target,
        p50,
    )


def test_forecasts_are_scored_when_their_target_reading_arrives() -> None:
    acc = ForecastAccuracy()
    t0 = 1_700_000_000_000
    # batch 1: a reading of "a" forecasts 900 s (p50 110) and 1800 s (p50 90) ahead
    assert feed(acc, ["a"], [t0], [100.0], [(0, 900, 110.0), (0, 1800, 90.0)]) == {}
    assert acc.pending == 2
    # batch 2: "b" at t0 + 900 s does not match "a"; "a" at t0 + 900 s matches horizon 900
    out = feed(acc, ["b", "a"], [t0 + STEP, t0 + STEP], [5.0, 100.0], [])
    assert list(out) == [900]
    np.testing.assert_allclose(out[900], [0.1])
    # batch 3: "a" at t0 + 1800 s matches the 1800 s forecast: |120 - 90| / 120
    out = feed(acc, ["a"], [t0 + 2 * STEP], [120.0], [])
    np.testing.assert_allclose(out[1800], [0.25])
    assert acc.pending == 0


def test_waiting_forecasts_survive_a_snapshot_as_plain_arrays() -> None:
    acc = ForecastAccuracy(capacity=100, max_entities=10, expire_after_s=7200)
    t0 = 1_700_000_000_000
    feed(acc, ["a", "b"], [t0, t0], [100.0, 50.0], [(0, 900, 110.0), (1, 1800, 40.0)])
    snap = acc.snapshot()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in snap.values())
    back = ForecastAccuracy.restore(snap)
    assert (back.pending, back.entities, back.capacity) == (2, 2, 100)
    for tracker in (acc, back):
        out = feed(tracker, ["a", "b"], [t0 + STEP, t0 + 2 * STEP], [100.0, 50.0], [])
        np.testing.assert_allclose(out[900], [0.1])
        np.testing.assert_allclose(out[1800], [0.2])


def test_readings_and_their_result_of_different_lengths_are_refused_clearly() -> None:
    acc = ForecastAccuracy()
    with pytest.raises(ValueError, match="differ in length"):
        acc.update(
            np.array(["a", "b"], dtype=object),
            np.zeros(2, dtype=np.int64),
            np.ones(2),
            np.ones(32, dtype=bool),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
            np.empty(0),
        )


def test_a_forecast_and_its_target_in_the_same_batch_match() -> None:
    acc = ForecastAccuracy()
    t0 = 1_700_000_000_000
    out = feed(acc, ["a", "a"], [t0, t0 + STEP], [10.0, 8.0], [(0, 900, 10.0)])
    np.testing.assert_allclose(out[900], [0.25])


def test_targets_skipped_by_the_entity_are_dropped_and_zero_actuals_ignored() -> None:
    acc = ForecastAccuracy()
    t0 = 1_700_000_000_000
    feed(acc, ["a"], [t0], [1.0], [(0, 900, 1.0)])
    # the first reading after the target comes later than ACTUAL_TOLERANCE_S: never matched
    for i in range(1, 9):
        feed(acc, ["a"], [t0 + STEP + ACTUAL_TOLERANCE_S * 1000 + i * 1000], [1.0], [])
    assert acc.pending == 0
    out = feed(acc, ["z", "z"], [t0, t0 + STEP], [1.0, 0.0], [(0, 900, 1.0)])
    assert out == {}  # 0 kW has no percentage error


def test_the_first_reading_within_the_tolerance_after_the_target_is_the_actual() -> None:
    """The rule of schemas.accuracy, as the ClickHouse view applies it: SCADA jitter matches."""
    acc = ForecastAccuracy()
    t0 = 1_700_000_000_000
    feed(acc, ["f"], [t0], [10.0], [(0, 900, 10.0)])
    # 250 ms late (a scan's jitter), then a second reading: the first one is the actual
    out = feed(acc, ["f", "f"], [t0 + STEP + 250, t0 + STEP + 30_000], [8.0, 20.0], [])
    np.testing.assert_allclose(out[900], [0.25])
    assert acc.pending == 0
    # a reading before the target does not match, nor does one a tolerance after it
    feed(acc, ["g"], [t0], [10.0], [(0, 900, 10.0)])
    assert feed(acc, ["g"], [t0 + STEP - 1], [10.0], []) == {} and acc.pending == 1
    assert feed(acc, ["g"], [t0 + STEP + ACTUAL_TOLERANCE_S * 1000], [10.0], []) == {}


def test_track_reports_the_quantiles_of_each_match() -> None:
    acc = ForecastAccuracy()
    t0 = 1_700_000_000_000
    m = acc.match(
        np.array(["a", "a"], dtype=object), np.array([t0, t0 + STEP]), np.array([10.0, 0.0]),
        np.ones(2, dtype=bool), np.array([0]), np.array([900]), np.array([t0 + STEP]),
        np.array([1.0]), np.array([0.5]), np.array([2.0]),
    )
    assert m.horizon_s.tolist() == [900] and m.actual.tolist() == [0.0]
    assert (m.p10.tolist(), m.p50.tolist(), m.p90.tolist()) == ([0.5], [1.0], [2.0])
    assert m.apes_by_horizon() == {}  # an actual of 0 has no percentage error


def test_memory_is_bounded_by_entities_and_capacity() -> None:
    acc = ForecastAccuracy(capacity=10, max_entities=3)
    t0 = 1_700_000_000_000
    entities = [f"m{i}" for i in range(8)]
    feed(acc, entities, [t0] * 8, [1.0] * 8, [(i, 900, 1.0) for i in range(8)])
    assert acc.entities == 3 and acc.pending == 3  # only the first three entities are tracked
    feed(
        acc,
        ["m0"] * 12,
        [t0 + i for i in range(1, 13)],
        [1.0] * 12,
        [(i, 3600, 1.0) for i in range(12)],
    )
    assert acc.pending == 10 and acc.untracked == 5


def test_stale_forecasts_expire_behind_the_newest_reading() -> None:
    acc = ForecastAccuracy(expire_after_s=3600)
    t0 = 1_700_000_000_000
    feed(acc, ["quiet"], [t0], [1.0], [(0, 900, 1.0)])
    for i in range(8):  # another entity moves two hours on; "quiet" never reports again
        feed(acc, ["busy"], [t0 + 7_200_000 + i], [1.0], [])
    assert acc.pending == 0
