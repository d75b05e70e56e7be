"""The pure telemetry generator: determinism, contracts, labels, anomalies, imperfections, shape."""

from __future__ import annotations

import pickle
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest

from schemas.decode import decode_batch
from schemas.readings import MeterReading, ScadaReading, parse_ts
from streams.sim.generator import (
    ANOMALY_KINDS,
    SimBatch,
    SimConfig,
    SimulationConfigError,
    TelemetrySimulator,
)

START = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)  # a Monday, 00:00 UTC
HOUR = 3_600_000
DAY = 24 * HOUR
CLEAN = {"missing_rate": 0.0, "late_rate": 0.0, "duplicate_rate": 0.0}


def run(config: SimConfig, days: float = 1.0, start: int = START) -> SimBatch:
    return TelemetrySimulator(config, start).step_until(start + int(days * DAY))


def readings(batch: SimBatch) -> dict[tuple[str, int], dict]:
    """(entity, ts) -> decoded reading; duplicates collapse, which is what they are."""
    return {
        (e, int(t)): orjson.loads(v)
        for e, t, v in zip(batch.entity, batch.ts_ms, batch.value, strict=True)
    }


def power(obj: dict) -> float:
    return obj["kw"] if "kw" in obj else obj["p_mw"]


def voltage(obj: dict) -> float:
    return obj["voltage_v"] if "voltage_v" in obj else obj["voltage_kv"]


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    cfg = SimConfig(meters=50, assets=10, seed=7, anomaly_rate_per_day=2.0)
    a, b = run(cfg), run(cfg)
    assert a.value == b.value and a.key == b.key and a.contract == b.contract
    assert np.array_equal(a.emit_ms, b.emit_ms) and a.labels == b.labels
    assert run(replace(cfg, seed=8)).value != a.value


def test_slicing_time_differently_gives_the_same_stream() -> None:
    cfg = SimConfig(meters=40, assets=10, seed=3, late_rate=0.1, duplicate_rate=0.05)
    whole = run(cfg, days=1)
    sliced = TelemetrySimulator(cfg, START)
    chunks = [sliced.step_until(START + k * 7 * 60_000) for k in range(1, 24 * 60 // 7)]
    chunks.append(sliced.step_until(START + DAY))  # 7-min slices: mostly between steps
    assert [v for c in chunks for v in c.value] == whole.value
    assert [lab for c in chunks for lab in c.labels] == whole.labels
    assert sum(c.late for c in chunks) == whole.late


def test_a_pickled_copy_continues_exactly_like_the_original() -> None:
    sim = TelemetrySimulator(SimConfig(meters=30, assets=6, seed=5, late_rate=0.2), START)
    sim.step_until(START + 5 * HOUR)
    copy = pickle.loads(pickle.dumps(sim))  # noqa: S301 - our own object
    assert copy.step_until(START + DAY).value == sim.step_until(START + DAY).value


def test_every_record_satisfies_its_contract_and_the_fast_decoder() -> None:
    cfg = SimConfig(meters=60, assets=12, seed=1, anomaly_rate_per_day=4.0, rfc3339_fraction=0.5)
    batch = run(cfg, days=2)
    models = {"meter": MeterReading, "scada": ScadaReading}
    kinds: Counter[str] = Counter()
    for contract, entity, key, value, ts in zip(
        batch.contract, batch.entity, batch.key, batch.value, batch.ts_ms, strict=True
    ):
        obj = orjson.loads(value)
        reading = models[contract].model_validate(obj)
        assert key == entity.encode()
        assert entity == (reading.meter_id if contract == "meter" else reading.asset_id)
        assert int(reading.ts.timestamp() * 1000) == ts
        kinds[type(obj["ts"]).__name__] += 1
    assert kinds["int"] > 0 and kinds["str"] > 0  # both timestamp forms producers use
    decoded = decode_batch(
        batch.value, batch.contract, now_ms=START + 2 * DAY, max_age_ms=3 * DAY, max_future_ms=0
    )
    assert decoded.rejections == [] and len(decoded.readings) == len(batch)


def test_rfc3339_timestamps_end_in_z_and_mean_the_same_instant() -> None:
    batch = run(SimConfig(meters=20, assets=5, rfc3339_fraction=1.0), days=0.1)
    for value, ts in zip(batch.value, batch.ts_ms, strict=True):
        text = orjson.loads(value)["ts"]
        assert text.endswith("Z") and parse_ts(text) == datetime.fromtimestamp(ts / 1000, UTC)


def test_labels_have_the_contract_kinds_sane_durations_and_never_overlap() -> None:
    cfg = SimConfig(meters=80, assets=20, seed=2, anomaly_rate_per_day=3.0, **CLEAN)
    sim = TelemetrySimulator(cfg, START)
    batch = sim.step_until(START + 3 * DAY)
    assert {lab.kind for lab in batch.labels} == set(ANOMALY_KINDS)
    bounds = {
        "spike": (1, 1),
        "drop_to_zero": (1, 4),
        "stuck": (4, 16),
        "drift": (8, 32),
        "voltage_sag": (1, 4),
        "step_change": (8, 32),
    }
    by_entity = defaultdict(list)
    for lab in batch.labels:
        kind = sim.entity_kinds[lab.entity_id]
        assert lab.entity_kind == kind and lab.start_ts.tzinfo is not None
        step = cfg.meter_interval_s if kind == "meter" else cfg.scada_interval_s
        steps = (lab.end_ts - lab.start_ts).total_seconds() / step + 1
        low, high = bounds[lab.kind]
        assert low <= steps <= high, lab
        by_entity[lab.entity_id].append(lab)
    for labs in by_entity.values():
        labs.sort(key=lambda lab: lab.start_ts)
        for before, after in zip(labs, labs[1:], strict=False):
            assert after.start_ts > before.end_ts
    # the rate is per entity per day
    expected = cfg.anomaly_rate_per_day * 3 * (cfg.meters + cfg.assets)
    assert 0.5 * expected < len(batch.labels) < 1.2 * expected


def test_each_anomaly_kind_changes_the_signal_only_in_its_window() -> None:
    cfg = SimConfig(meters=60, assets=20, seed=11, anomaly_rate_per_day=3.0, **CLEAN)
    hit = run(cfg, days=3)
    truth = readings(run(replace(cfg, anomaly_rate_per_day=0.0), days=3))
    got = readings(hit)
    assert got.keys() == truth.keys()
    windows: set[tuple[str, int]] = set()
    seen: Counter[str] = Counter()
    for lab in hit.labels:
        start = int(lab.start_ts.timestamp() * 1000)
        end = int(lab.end_ts.timestamp() * 1000)
        keys = sorted(k for k in got if k[0] == lab.entity_id and start <= k[1] <= end)
        windows.update(keys)
        if not keys:  # started in the last step of the run
            continue
        seen[lab.kind] += 1
        ours = [got[k] for k in keys]
        clean = [truth[k] for k in keys]
        ratio = np.array([power(o) / power(c) for o, c in zip(ours, clean, strict=True)])
        if lab.kind == "spike":
            assert ratio.min() > 2.5
        elif lab.kind == "drop_to_zero":
            assert all(power(o) == 0.0 for o in ours)
        elif lab.kind == "stuck":
            frozen = [{f: v for f, v in o.items() if f != "ts"} for o in ours]
            assert all(f == frozen[0] for f in frozen) and len(frozen) >= 4
        elif lab.kind == "drift":  # ramps away; by its end (if inside the run) by > 25 %
            complete = keys[-1][1] == end
            assert abs(ratio[-1] - 1) > (0.25 if complete else abs(ratio[0] - 1))
        elif lab.kind == "voltage_sag":
            sag = [voltage(o) / voltage(c) for o, c in zip(ours, clean, strict=True)]
            assert max(sag) < 0.91 and min(sag) > 0.79
        elif lab.kind == "step_change":
            assert np.all(np.abs(ratio - 1) > 0.25) and np.ptp(ratio) < 0.05
    assert set(seen) == set(ANOMALY_KINDS)
    assert all(got[k] == truth[k] for k in got if k not in windows)


def test_missing_late_and_duplicate_rates_are_roughly_as_configured() -> None:
    cfg = SimConfig(
        meters=100, assets=20, seed=4, missing_rate=0.05, late_rate=0.05, duplicate_rate=0.02
    )
    sim = TelemetrySimulator(cfg, START)
    batch = sim.step_until(START + 2 * DAY)
    rest = sim.step_until(START + 3 * DAY)  # the stragglers of day two arrive
    expected = 2 * (cfg.meters * 96 + cfg.assets * 288)
    assert batch.generated == expected + cfg.meters + cfg.assets  # both ends inclusive
    assert 0.035 < batch.missing / batch.generated < 0.065
    assert 0.035 < batch.late / batch.generated < 0.065
    assert 0.01 < batch.duplicates / batch.generated < 0.03
    values = Counter(batch.value)
    assert sum(n - 1 for n in values.values()) == batch.duplicates  # exact copies
    is_late = batch.emit_ms > batch.ts_ms
    interval = np.where(np.array(batch.contract) == "meter", 900_000, 300_000)
    steps = (batch.emit_ms - batch.ts_ms) / interval
    assert steps.max() <= cfg.late_max_steps and np.all(steps == steps.round())
    assert 0 < is_late.sum() <= batch.late
    late_later = int((rest.ts_ms <= START + 2 * DAY).sum())
    assert is_late.sum() + late_later == batch.late
    assert np.all(np.diff(batch.emit_ms) >= 0)  # records come out in emission order


def test_residential_meters_peak_in_the_evening_and_commercial_by_day() -> None:
    def mean_kw(batch: SimBatch, hours: range, weekday: bool = True) -> float:
        ts = batch.ts_ms
        hour = (ts // HOUR) % 24
        dow = (ts // DAY + 3) % 7
        sel = np.isin(hour, hours) & ((dow < 5) == weekday)
        return float(
            np.mean([orjson.loads(v)["kw"] for v, s in zip(batch.value, sel, strict=True) if s])
        )

    base = SimConfig(meters=100, assets=0, seed=9, anomaly_rate_per_day=0.0, **CLEAN)
    homes = run(replace(base, commercial_fraction=0.0), days=7)
    assert mean_kw(homes, range(18, 21)) > 1.8 * mean_kw(homes, range(1, 4))
    shops = run(replace(base, commercial_fraction=1.0), days=7)
    assert mean_kw(shops, range(10, 16)) > 2.5 * mean_kw(shops, range(1, 4))
    assert mean_kw(shops, range(10, 16)) > 1.5 * mean_kw(shops, range(10, 16), weekday=False)


def test_feeders_follow_their_meters_and_physics_holds() -> None:
    cfg = SimConfig(meters=300, assets=10, seed=6, anomaly_rate_per_day=0.0, **CLEAN)
    sim = TelemetrySimulator(cfg, START)
    batch = sim.step_until(START + 2 * DAY)
    meter_sum: dict[tuple[str, int], float] = defaultdict(float)
    feeder: dict[tuple[str, int], float] = {}
    temps: dict[str, list[float]] = defaultdict(list)
    for (entity, ts), obj in readings(batch).items():
        kind = sim.entity_kinds[entity]
        if kind == "meter":
            meter_sum[sim.topology[entity], ts] += obj["kw"]
            if "current_a" in obj:
                apparent = (obj["kw"] ** 2 + obj["kvar"] ** 2) ** 0.5
                assert obj["current_a"] == pytest.approx(apparent * 1000 / obj["voltage_v"], 0.01)
            assert 200 < obj["voltage_v"] < 245
            continue
        nominal = {"feeder": 11.0, "transformer": 33.0, "substation": 132.0}[kind]
        assert 0.9 * nominal < obj["voltage_kv"] < 1.06 * nominal
        assert 49.8 < obj["frequency_hz"] < 50.2
        assert ("temperature_c" in obj) == (kind != "feeder")
        if kind == "feeder":
            feeder[entity, ts] = obj["p_mw"]
        else:
            temps[entity].append(obj["temperature_c"])
    keys = sorted(k for k in feeder if k in meter_sum)
    x = np.array([meter_sum[k] for k in keys])
    y = np.array([feeder[k] for k in keys])
    assert np.corrcoef(x, y)[0, 1] > 0.9
    assert all(np.all(np.abs(np.diff(t)) < 3.0) for t in temps.values())  # lagged, no jumps


@pytest.mark.parametrize("meters, assets", [(0, 1), (1, 0), (3, 2), (5, 3)])
def test_tiny_fleets_work(meters: int, assets: int) -> None:
    sim = TelemetrySimulator(SimConfig(meters=meters, assets=assets), START + 1)
    batch = sim.step_until(START + DAY)
    assert len(batch) > 0 and batch.ts_ms.min() >= START + 1
    assert len(set(batch.entity)) == meters + assets
    assert sim.next_due_ms > START + DAY


@pytest.mark.parametrize(
    "field, value",
    [("missing_rate", 1.5), ("meters", -1), ("scada_interval_s", 0), ("anomaly_rate_per_day", -1)],
)
def test_bad_config_says_which_field(field: str, value: float) -> None:
    with pytest.raises(SimulationConfigError, match=field):
        SimConfig(**{field: value})
