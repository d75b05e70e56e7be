"""Contracts and behaviour of the streaming core, ``GridProcessor.process_batch``.

river's estimator checks (no input mutation, batch == one by one, seed determinism, pickling,
bounded memory, score before learning) plus accounting, ordering, detection behaviour on
simulated-like load curves, forecasts and events. Assertions are on behaviour, never on exact
score values: the models are expected to change.
"""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pytest

from models.detectors import DETECTORS
from models.events import event_id, reading_dict
from models.params import ProcessorParams
from models.processor import GridProcessor, ProcessResult
from schemas.batch import AnomalyRecord, ReadingBatch, entity_key
from schemas.outputs import SEVERITIES
from tests.unit.builders import (
    DAY_MS,
    HOUR_MS,
    NOW_MS,
    START_MS,
    STEP_MS,
    batch,
    columns,
    concat,
    daily_load,
    one_by_one,
    rows_of,
    split,
    to_batch,
)

P = ProcessorParams()
# For the two-day contract stream: time-of-day departures count from the second day on.
P_SHORT = ProcessorParams(seasonal_min_days=1)
# The river model scores only after it learned a full window: these make it take part in short
# streams (small window, learn every other reading, a gate most readings pass under).
P_HST = replace(
    P_SHORT,
    hst_window=16,
    hst_learn_every=2,
    gate_decades=1.0,
    detectors=(*P.detectors, "hst"),
)
# The river model is off by default: entities are then fully independent of each other.
P_NO_HST = ProcessorParams()
REJECTIONS = {"out_of_order", "conflicting_duplicate"}
CORES = ("GridProcessor", "TaskSet")  # the contracts hold for the core and for what runs live


# -- helpers -----------------------------------------------------------------------------------
class TaskSetCore:
    """The live run's partition tasks behind ``GridProcessor``'s interface: each entity's rows
    go to the core of the partition its key is produced to (two partitions), as they do live."""

    TIDS = [("readings", 0), ("readings", 1)]

    def __init__(self, params: ProcessorParams = P) -> None:
        from streams.state.tasks import TaskSet

        self.params = params
        self.tasks = TaskSet(params)

    @property
    def entities(self) -> int:
        return self.tasks.entities

    def process_batch(self, b: ReadingBatch, now_ms: int) -> ProcessResult:
        from streams.state.tasks import partition_of

        part = partition_of(entity_key(b.kind, b.entity), len(self.TIDS))  # type: ignore[arg-type]
        return self.tasks.process(b, part, self.TIDS, now_ms).result

    def snapshot(self) -> bytes:
        return b"".join(t.processor.snapshot() for _, t in sorted(self.tasks.tasks.items()))

    def processors(self) -> list[GridProcessor]:
        return [t.processor for t in self.tasks.tasks.values()]


Core = GridProcessor | TaskSetCore


def make_core(kind: str, params: ProcessorParams = P) -> Core:
    return GridProcessor(params) if kind == "GridProcessor" else TaskSetCore(params)


def kind_of(core: Core) -> str:
    return "TaskSet" if isinstance(core, TaskSetCore) else "GridProcessor"


@pytest.fixture(params=CORES)
def core_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Flat:
    """The outputs of several consecutive batches, joined as if they were one batch's."""

    score: np.ndarray
    severity: np.ndarray
    expected: np.ndarray
    forecast_rows: np.ndarray
    forecasts: dict[str, np.ndarray]
    models: set[str]
    anomalies: list[AnomalyRecord]
    rejections: list[tuple[int, str, str]]
    counters: dict[str, int] = field(default_factory=dict)


def run(
    batches: list[ReadingBatch],
    params: ProcessorParams = P,
    proc: Core | None = None,
    kind: str = "GridProcessor",
) -> tuple[Core, Flat]:
    proc = proc or make_core(kind, params)
    results = [proc.process_batch(b, NOW_MS) for b in batches]
    return proc, flatten(batches, results)


def flatten(batches: list[ReadingBatch], results: list[ProcessResult]) -> Flat:
    offsets = np.cumsum([0, *(len(b) for b in batches)])[:-1]
    counters: Counter[str] = Counter()
    for r in results:
        counters.update(r.counters)
    fc_names = [f.name for f in fields(results[0].forecasts) if f.name != "model"]
    return Flat(
        score=np.concatenate([r.score for r in results]),
        severity=np.concatenate([r.severity for r in results]),
        expected=np.concatenate([r.expected for r in results]),
        forecast_rows=np.concatenate(
            [r.forecast_rows + o for r, o in zip(results, offsets, strict=True)]
        ),
        forecasts={n: np.concatenate([getattr(r.forecasts, n) for r in results]) for n in fc_names},
        models={r.forecasts.model for r in results if len(r.forecasts)},
        anomalies=[a for r in results for a in r.anomalies],
        rejections=[(x.src_index, x.error_class, x.error) for r in results for x in r.rejections],
        counters={k: v for k, v in counters.items() if v},
    )


def assert_same(a: Flat, b: Flat, kind: str = "GridProcessor") -> None:
    """Every output equal: scores, severities, expectations, forecasts, events, rejections.

    The partition tasks merge a batch's events task by task, so under ``TaskSet`` events keep
    their input order per entity (hence per partition), not across the batch."""
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.severity, b.severity)
    np.testing.assert_array_equal(a.expected, b.expected)
    if kind == "TaskSet":  # forecasts come task by task too: compare them in row order
        a, b = _forecasts_by_row(a), _forecasts_by_row(b)
    np.testing.assert_array_equal(a.forecast_rows, b.forecast_rows)
    assert a.forecasts.keys() == b.forecasts.keys()
    for name in a.forecasts:
        np.testing.assert_array_equal(a.forecasts[name], b.forecasts[name], err_msg=name)
    assert a.models == b.models
    if kind == "TaskSet":
        by_entity = lambda f: sorted(f.anomalies, key=lambda e: (e.entity_kind, e.entity_id))  # noqa: E731
        assert by_entity(a) == by_entity(b)  # a stable sort keeps each entity's own order
    else:
        assert [e.event_id for e in a.anomalies] == [e.event_id for e in b.anomalies]
        assert a.anomalies == b.anomalies
    assert a.rejections == b.rejections
    assert a.counters == b.counters


def _forecasts_by_row(f: Flat) -> Flat:
    order = np.lexsort((f.forecasts["horizon_s"], f.forecast_rows))
    forecasts = {name: column[order] for name, column in f.forecasts.items()}
    return replace(f, forecast_rows=f.forecast_rows[order], forecasts=forecasts)


def events_of(flat: Flat, entity: str) -> list[AnomalyRecord]:
    return [e for e in flat.anomalies if e.entity_id == entity]


def step_of(ts_ms: int, day: int = 0) -> int:
    return (ts_ms - START_MS) // STEP_MS - day * 96


# -- data --------------------------------------------------------------------------------------
def _contract_stream() -> ReadingBatch:
    """Two days of four entities (two share an id), with anomalies, re-deliveries, a conflict
    and a late reading, delivered in blocks of six hours where each entity's block arrives whole
    (entity-major): a batch holds many readings per entity and rounds differ from arrival order."""
    ents = [("m1", "meter"), ("m2", "meter"), ("x", "meter"), ("x", "feeder")]
    cols = daily_load(ents, days=2, seed=11)
    m1, m2, xf = rows_of(cols, "m1"), rows_of(cols, "m2"), rows_of(cols, "x", "feeder")
    cols["value"][m1[150]] *= 4.0  # spike
    cols["value"][m2[170:190]] = cols["value"][m2[170]]  # stuck
    cols["voltage"][xf[120:123]] *= 0.8  # sag
    base = to_batch(cols)
    block = (cols["ts_ms"] - START_MS) // (6 * HOUR_MS)
    stream = base.take(np.lexsort((np.arange(len(base)), cols["entity"].astype(str), block)))
    keys = [f"{k}/{e}" for k, e in zip(stream.kind, stream.entity, strict=True)]

    def latest(cut: int, row: int) -> int:
        """The latest reading before ``cut`` of the entity of ``row``."""
        return max(i for i in range(cut) if keys[i] == keys[row])

    # exact re-deliveries of entities' latest readings (one twice): dropped as duplicates
    dup = stream.take(np.array([latest(400, r) for r in (0, 24, 48, 49, 0)]))
    conflict = columns(stream.take(np.array([latest(520, 24)])))  # same ts, another value
    conflict["value"] = conflict["value"] + 1.0
    late = stream.take(np.array([20]))  # an older reading: out of order
    parts = [
        stream.take(np.arange(0, 400)),
        dup,
        stream.take(np.arange(400, 520)),
        to_batch(conflict),
        late,
        stream.take(np.arange(520, len(stream))),
    ]
    out = columns(concat(parts))
    out["src_index"] = 1000 + np.arange(len(out["ts_ms"]))  # not positions: must be carried
    return to_batch(out)


STREAM = _contract_stream()
CUTS = sorted(np.random.default_rng(3).choice(np.arange(1, len(STREAM)), 14, replace=False))


def _splits(kind: str) -> list[ReadingBatch]:
    if kind == "one_batch":
        return [STREAM]
    if kind == "n_batches":
        return split(STREAM, [int(c) for c in CUTS])
    if kind == "with_empty_batches":
        return split(STREAM, [0, 100, 100, 101, len(STREAM)])
    return one_by_one(STREAM)


@pytest.fixture(
    scope="module",
    params=[(p, k) for p in (P_SHORT, P_HST) for k in CORES],
    ids=[f"{p}-{k}" for p in ("river_idle", "river_active") for k in CORES],
)
def reference(request: pytest.FixtureRequest) -> tuple[ProcessorParams, Core, Flat]:
    params, kind = request.param
    proc, flat = run([STREAM], params, kind=kind)
    return params, proc, flat


# -- river-style contracts ---------------------------------------------------------------------
def test_contract_stream_exercises_everything(
    reference: tuple[ProcessorParams, GridProcessor, Flat],
) -> None:
    params, proc, flat = reference
    assert flat.anomalies, "the contract stream must produce events"
    assert flat.counters["dropped_duplicate"] == 5
    assert {r[1] for r in flat.rejections} == REJECTIONS
    assert len(flat.forecasts["p50"]) > 0
    fired = {name for e in flat.anomalies for name in e.fired}
    # two days: the seasonal detector's tail is not ready yet (models.tails needs tail_min)
    assert {"residual", "stuck", "channel"} <= fired, fired
    if params is P_HST:
        cores = proc.processors() if isinstance(proc, TaskSetCore) else [proc]
        assert len(cores) == (2 if isinstance(proc, TaskSetCore) else 1)
        assert sum(c.online.scored for c in cores) > 0
        assert sum(c.online.learned for c in cores) > 2 * params.hst_window


@pytest.mark.parametrize("how", ["n_batches", "with_empty_batches", "one_by_one"])
def test_split_invariance_batch_equals_one_by_one(
    reference: tuple[ProcessorParams, GridProcessor, Flat], how: str
) -> None:
    params, proc, whole = reference
    _, pieces = run(_splits(how), params, kind=kind_of(proc))
    assert_same(whole, pieces, kind_of(proc))


def test_events_come_in_input_order_when_a_batch_holds_several_readings_per_entity() -> None:
    cols = daily_load([("a", "meter"), ("b", "meter")], days=2, seed=23)
    proc = GridProcessor(P)
    proc.process_batch(to_batch(cols), NOW_MS)
    t = int(cols["ts_ms"][-1]) + STEP_MS
    a = rows_of(cols, "a")
    usual = float(cols["value"][a][-96])  # "a" a day earlier at this time: nothing unusual
    rows = [("a", "meter", t, usual), ("a", "meter", t + STEP_MS, 50.0), ("b", "meter", t, 50.0)]
    res = proc.process_batch(batch(rows), NOW_MS)
    # "b" is in the first round, "a"'s spike in the second: events still follow the input
    assert [(e.entity_id, e.ts_ms) for e in res.anomalies] == [("a", t + STEP_MS), ("b", t)]


def test_process_batch_does_not_mutate_its_input(core_kind: str) -> None:
    before = {f.name: getattr(STREAM, f.name).copy() for f in fields(STREAM)}
    proc = make_core(core_kind, P_HST)
    res = proc.process_batch(STREAM, NOW_MS)
    for name, old in before.items():
        new = getattr(STREAM, name)
        assert new.dtype == old.dtype, name
        np.testing.assert_array_equal(new, old, err_msg=name)
    # outputs are not views of the input: editing them leaves the batch alone
    res.forecasts.entity[:] = "edited"
    res.forecasts.issued_ms[:] = 0
    np.testing.assert_array_equal(STREAM.entity, before["entity"])
    np.testing.assert_array_equal(STREAM.ts_ms, before["ts_ms"])


def test_seed_determinism(reference: tuple[ProcessorParams, GridProcessor, Flat]) -> None:
    params, proc, first = reference
    _, again = run([STREAM], params, kind=kind_of(proc))
    assert_same(first, again, kind_of(proc))
    # another seed is a different model: it may score differently, but it runs and is valid
    _, other = run([STREAM], replace(params, seed=params.seed + 1), kind=kind_of(proc))
    finite = other.score[np.isfinite(other.score)]
    assert finite.size and np.all((finite >= 0.0) & (finite <= 1.0))


@pytest.mark.parametrize("how", ["snapshot", "pickle"])
def test_resume_from_snapshot_or_pickle_continues_identically(
    reference: tuple[ProcessorParams, Core, Flat], how: str
) -> None:
    params, proc, whole = reference
    pieces = _splits("n_batches")
    half = len(pieces) // 2
    first = make_core(kind_of(proc), params)
    results = [first.process_batch(b, NOW_MS) for b in pieces[:half]]
    resumed = _resumed(first, how)
    assert resumed.entities == first.entities
    results += [resumed.process_batch(b, NOW_MS) for b in pieces[half:]]
    assert_same(whole, flatten(pieces, results), kind_of(proc))


def _resumed(core: Core, how: str) -> Core:
    """``core`` rebuilt from its snapshot (each partition task's, as checkpoints hold them) or a
    pickle of it."""
    if how == "pickle":
        return pickle.loads(pickle.dumps(core))  # noqa: S301 - our own bytes
    if isinstance(core, GridProcessor):
        blob = core.snapshot()
        assert isinstance(blob, bytes)
        resumed = GridProcessor.from_snapshot(blob)
        assert resumed.params == core.params
        return resumed
    again = TaskSetCore(core.params)
    for tid, task in core.tasks.tasks.items():
        again.tasks.adopt(tid, GridProcessor.from_snapshot(task.processor.snapshot()), -1)
    return again


def test_snapshot_of_another_format_is_refused() -> None:
    old = pickle.dumps({"format": 2, "params": ProcessorParams()})  # the pickled layout
    with pytest.raises(ValueError, match="not a gridstream state snapshot"):
        GridProcessor.from_snapshot(old)


def test_memory_is_bounded_by_entities_not_readings() -> None:
    ents = [(f"m{i}", "meter") for i in range(20)]
    cols = daily_load(ents, days=3, seed=5)
    b = to_batch(cols)
    day = 96 * len(ents)
    proc = GridProcessor(P_HST)
    proc.process_batch(b.take(np.arange(day)), NOW_MS)
    state_bytes, snap_bytes = proc.state.nbytes(), len(proc.snapshot())
    for d in range(1, 3):  # two more days of the same entities
        proc.process_batch(b.take(np.arange(d * day, (d + 1) * day)), NOW_MS)
        assert proc.state.nbytes() == state_bytes
        assert len(proc.snapshot()) < 1.1 * snap_bytes
    # more entities: state grows linearly (capacity doubling, at most 2x what is used)
    per_entity, initial = state_bytes / proc.state.capacity, proc.state.capacity
    for n in (200, 1000):
        more = batch([(f"n{i}", "meter", START_MS, 1.0) for i in range(n)])
        proc.process_batch(more, NOW_MS)
        assert proc.entities == 20 + n
        assert proc.state.nbytes() == pytest.approx(per_entity * proc.state.capacity)
        assert proc.state.capacity <= 2 * max(proc.entities, initial)


def test_empty_batch_gives_an_empty_result_and_changes_nothing(core_kind: str) -> None:
    proc = make_core(core_kind, P_HST)
    proc.process_batch(STREAM.take(np.arange(200)), NOW_MS)
    blob = proc.snapshot()
    for empty in (ReadingBatch.empty(), STREAM.take(np.arange(0))):
        res = proc.process_batch(empty, NOW_MS)
        assert len(res.forecasts) == 0 and res.forecast_rows.size == 0
        assert res.anomalies == [] and res.rejections == []
        assert res.score.size == res.severity.size == res.expected.size == 0
        assert sum(res.counters.values()) == 0
    assert proc.snapshot() == blob
    assert GridProcessor().process_batch(ReadingBatch.empty(), NOW_MS).anomalies == []


def test_prequential_a_reading_is_scored_before_it_is_learned() -> None:
    cols = daily_load([("m", "meter")], days=2, seed=2)
    history = to_batch(cols)
    last_ts = int(cols["ts_ms"][-1])
    normal_v = float(np.median(cols["value"][-4:]))
    spike_v = 5.0 * normal_v
    proc = GridProcessor(P)
    proc.process_batch(history, NOW_MS)
    blob = proc.snapshot()

    spike = batch([("m", "meter", last_ts + STEP_MS, spike_v)])
    r_spike = proc.process_batch(spike, NOW_MS)
    normal = batch([("m", "meter", last_ts + STEP_MS, normal_v)])
    r_normal = GridProcessor.from_snapshot(blob).process_batch(normal, NOW_MS)
    # the expectation a reading is scored against does not depend on that reading
    assert r_spike.expected[0] == r_normal.expected[0]
    assert r_spike.score[0] >= P.emit_threshold > r_normal.score[0]
    assert [e.ts_ms for e in r_spike.anomalies] == [last_ts + STEP_MS]
    # a re-delivery of the spike is not scored (nor learned) a second time
    redelivered = proc.process_batch(spike, NOW_MS)
    assert redelivered.counters["dropped_duplicate"] == 1 and np.isnan(redelivered.score[0])
    # ... and it was learned after scoring: the model now expects more than before
    again = batch([("m", "meter", last_ts + 2 * STEP_MS, spike_v)])
    after = proc.process_batch(again, NOW_MS)
    assert after.expected[0] > r_spike.expected[0]


# -- accounting --------------------------------------------------------------------------------
def _assert_accounted(b: ReadingBatch, res: ProcessResult) -> None:
    n = len(b)
    c = res.counters
    assert c["readings"] == n
    assert c["scored"] + c["warming_up"] + c["dropped_duplicate"] + len(res.rejections) == n
    assert res.score.shape == res.severity.shape == res.expected.shape == (n,)
    rejected_src = [r.src_index for r in res.rejections]
    assert len(set(rejected_src)) == len(rejected_src) and rejected_src == sorted(rejected_src)
    assert set(rejected_src) <= set(b.src_index.tolist())
    assert {r.error_class for r in res.rejections} <= REJECTIONS
    rejected = np.isin(b.src_index, rejected_src)
    scored = np.isfinite(res.score)
    assert int(scored.sum()) == c["scored"]
    assert not (scored & rejected).any()
    assert int((~scored & ~rejected).sum()) == c["warming_up"] + c["dropped_duplicate"]
    assert np.all(res.severity[~scored] == -1)
    assert np.all((res.score[scored] >= 0.0) & (res.score[scored] <= 1.0))
    assert np.all((res.severity >= -1) & (res.severity <= 2))
    # events and forecasts come only from accepted readings
    assert not np.isin(res.forecast_rows, np.flatnonzero(rejected)).any()
    scored_keys = {(b.entity[i], b.kind[i], int(b.ts_ms[i])) for i in np.flatnonzero(scored)}
    assert {(e.entity_id, e.entity_kind, e.ts_ms) for e in res.anomalies} <= scored_keys


@pytest.mark.parametrize("how", ["one_batch", "n_batches"])
def test_every_row_is_scored_warming_dropped_or_rejected(how: str, core_kind: str) -> None:
    pieces = _splits(how)
    proc = make_core(core_kind, P_HST)
    total: Counter[str] = Counter()
    rejections = []
    for b in pieces:
        res = proc.process_batch(b, NOW_MS)
        _assert_accounted(b, res)
        total.update(res.counters)
        rejections += res.rejections
    assert total["readings"] == len(STREAM)
    assert total["dropped_duplicate"] == 5
    classes = Counter(r.error_class for r in rejections)
    assert classes == {"conflicting_duplicate": 1, "out_of_order": 1}
    # rejections point back at the input records, by src_index
    conflict_src, late_src = 1000 + 400 + 5 + 120, 1000 + 400 + 5 + 120 + 1
    assert {(r.src_index, r.error_class) for r in rejections} == {
        (conflict_src, "conflicting_duplicate"),
        (late_src, "out_of_order"),
    }


# -- ordering and de-duplication ---------------------------------------------------------------
T0 = START_MS


def _seq() -> list[tuple[str, str, int, float]]:
    return [
        ("a", "meter", T0, 1.0),
        ("a", "meter", T0 + STEP_MS, 2.0),
        ("a", "meter", T0 + STEP_MS, 2.0),  # exact duplicate -> dropped_duplicate
        ("a", "meter", T0 + STEP_MS, 2.5),  # same ts, other value -> conflicting_duplicate
        ("a", "meter", T0, 1.0),  # older ts (even if a duplicate of it) -> out_of_order
        ("a", "meter", T0 + 2 * STEP_MS, 3.0),  # accepted: the third reading
    ]


@pytest.mark.parametrize("how", ["one_batch", "one_by_one", "pairs"])
def test_duplicates_conflicts_and_late_readings(how: str, core_kind: str) -> None:
    b = batch(_seq(), src_offset=50)
    pieces = {"one_batch": [b], "one_by_one": one_by_one(b), "pairs": split(b, [2, 4])}[how]
    proc, flat = run(pieces, kind=core_kind)
    assert flat.counters["dropped_duplicate"] == 1
    assert [(s, c) for s, c, _ in flat.rejections] == [
        (53, "conflicting_duplicate"),
        (54, "out_of_order"),
    ]
    assert "already seen" in flat.rejections[0][2] and "before" in flat.rejections[1][2]
    # the third accepted reading gets forecasts (forecast_min=3): the others were not learned
    assert set(flat.forecast_rows.tolist()) == {5}
    assert proc.entities == 1
    # and the state is as if the dropped and rejected readings had never arrived
    _, clean = run([batch([_seq()[i] for i in (0, 1, 5)])], kind=core_kind)
    np.testing.assert_array_equal(clean.expected, flat.expected[[0, 1, 5]])
    for name in clean.forecasts:
        np.testing.assert_array_equal(clean.forecasts[name], flat.forecasts[name])


def test_order_checks_are_per_entity(core_kind: str) -> None:
    # another entity's older reading is not late, and the same id of another kind is distinct
    rows = [
        ("a", "meter", T0 + 5 * STEP_MS, 1.0),
        ("b", "meter", T0, 1.0),
        ("a", "feeder", T0, 1.0),
        ("a", "feeder", T0, 1.0),
    ]
    proc, flat = run([batch(rows)], kind=core_kind)
    assert flat.rejections == []
    assert flat.counters["dropped_duplicate"] == 1
    assert proc.entities == 3


def test_same_id_meter_and_scada_are_distinct_entities(core_kind: str) -> None:
    cols = daily_load([("x", "meter"), ("x", "feeder")], days=2, seed=4)
    both = to_batch(cols)
    proc, flat = run([both], P_NO_HST, kind=core_kind)
    assert proc.entities == 2
    for kind in ("meter", "feeder"):
        idx = rows_of(cols, "x", kind)
        _, alone = run([both.take(idx)], P_NO_HST, kind=core_kind)
        np.testing.assert_array_equal(flat.score[idx], alone.score)
        np.testing.assert_array_equal(flat.expected[idx], alone.expected)
    assert set(flat.forecasts["kind"].tolist()) == {"meter", "feeder"}


# -- behaviour on simulated-like load ----------------------------------------------------------
DAY4 = 4 * 96  # anomalies are injected on day 5, once the seasonal profile is trusted
CLEAN_ENTITIES = ("c1", "c2", "f1")


@dataclass(frozen=True)
class Scenario:
    cols: dict[str, np.ndarray]
    flat: Flat
    proc: GridProcessor


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    ents = [
        ("spike", "meter"),
        ("drop", "meter"),
        ("stuck", "meter"),
        ("sag", "meter"),
        ("step", "meter"),
        ("fsag", "feeder"),
        ("c1", "meter"),
        ("c2", "meter"),
        ("f1", "feeder"),
    ]
    cols = daily_load(ents, days=5, seed=21)

    def at(entity: str, lo: int, hi: int | None = None) -> np.ndarray:
        r = rows_of(cols, entity)
        return r[DAY4 + lo : DAY4 + (hi if hi is not None else lo + 1)]

    cols["value"][at("spike", 10)] *= 3.0
    cols["value"][at("drop", 20)] = 0.0
    stuck = at("stuck", 30, 62)  # eight hours of one value
    cols["value"][stuck] = cols["value"][stuck[0]]
    cols["voltage"][at("sag", 40, 44)] *= 0.85
    cols["voltage"][at("fsag", 60, 64)] *= 0.9
    cols["value"][at("step", 50, 96)] += 1.5
    # an entity that appears on day 3, mid-stream
    late = daily_load([("newcomer", "meter")], days=2, start_ms=START_MS + 3 * DAY_MS, seed=9)
    merged = {k: np.concatenate([cols[k], late[k]]) for k in cols}
    order = np.argsort(merged["ts_ms"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    merged["src_index"] = np.arange(len(order))
    proc, flat = run([to_batch(merged)], P)
    return Scenario(merged, flat, proc)


@pytest.mark.parametrize(
    ("entity", "kind", "at", "within", "features", "detector", "sign"),
    [
        ("spike", "meter", 10, 0, {"kw", "kw_vs_time_of_day"}, "residual", 1),
        ("drop", "meter", 20, 0, {"kw", "kw_vs_time_of_day"}, "residual", -1),
        ("stuck", "meter", 30, 12, {"identical_readings"}, "stuck", 1),
        ("sag", "meter", 40, 1, {"voltage_v"}, "channel", -1),
        ("fsag", "feeder", 60, 1, {"voltage_kv"}, "channel", -1),
        ("step", "meter", 50, 2, {"kw", "kw_vs_time_of_day"}, None, 1),
    ],
)
def test_injected_anomaly_is_flagged_on_the_right_entity_and_explained(
    scenario: Scenario,
    entity: str,
    kind: str,
    at: int,
    within: int,
    features: set[str],
    detector: str | None,
    sign: int,
) -> None:
    events = events_of(scenario.flat, entity)
    hits = [e for e in events if at <= step_of(e.ts_ms, 4) <= at + within]
    assert hits, f"no event for {entity} at step {at}: {[step_of(e.ts_ms, 4) for e in events]}"
    first = hits[0]
    assert first.entity_kind == kind
    assert first.severity in SEVERITIES and first.score >= P.emit_threshold
    top = first.explanation[0]
    assert top["feature"] in features, first.explanation
    assert np.sign(float(top["deviation"])) == sign  # type: ignore[arg-type]
    if detector is not None:
        assert detector in first.fired, first.fired
    # nothing before the injection (on this clean-until-then entity) but at most a stray
    assert sum(e.ts_ms < first.ts_ms for e in events) <= 1


def test_clean_entities_raise_few_or_no_events(scenario: Scenario) -> None:
    for entity in CLEAN_ENTITIES:
        assert len(events_of(scenario.flat, entity)) <= 2, entity
    # and the whole clean part of the stream is quiet: at most a stray event per entity-day
    before = [e for e in scenario.flat.anomalies if step_of(e.ts_ms) < DAY4 + 10]
    assert len(before) <= 5


def test_cooldown_one_event_per_cooldown_unless_severity_rises(scenario: Scenario) -> None:
    cooldown_ms = P.cooldown_s * 1000
    by_entity: dict[tuple[str, str], list[AnomalyRecord]] = {}
    for e in scenario.flat.anomalies:
        by_entity.setdefault((e.entity_kind, e.entity_id), []).append(e)
    for events in by_entity.values():
        for prev, nxt in zip(events, events[1:], strict=False):
            assert nxt.ts_ms > prev.ts_ms
            rises = SEVERITIES.index(nxt.severity) > SEVERITIES.index(prev.severity)
            assert nxt.ts_ms - prev.ts_ms >= cooldown_ms or rises
    # the eight-hour stuck meter: a bounded number of events, the rest suppressed
    stuck = [e for e in events_of(scenario.flat, "stuck") if 30 <= step_of(e.ts_ms, 4) < 62]
    hours = 8
    assert 1 <= len(stuck) <= hours + len(SEVERITIES)
    assert scenario.flat.counters["suppressed_cooldown"] > 0


def test_events_match_their_readings(scenario: Scenario) -> None:
    cols, flat = scenario.cols, scenario.flat
    index = {
        (cols["kind"][i], cols["entity"][i], int(cols["ts_ms"][i])): i
        for i in range(len(cols["ts_ms"]))
    }
    ts = [e.ts_ms for e in flat.anomalies]
    assert ts == sorted(ts)  # events in input order (the stream is time-ordered)
    for e in flat.anomalies:
        row = index[(e.entity_kind, e.entity_id, e.ts_ms)]
        assert e.event_id == event_id(e.entity_kind, e.entity_id, e.ts_ms)
        assert flat.score[row] == pytest.approx(e.score, abs=1e-4)
        assert SEVERITIES[flat.severity[row]] == e.severity
        assert set(e.detectors) == set(DETECTORS)
        assert all(0.0 <= s <= 1.0 for s in e.detectors.values())
        assert set(e.fired) <= set(DETECTORS)
        assert 1 <= len(e.explanation) <= 3
        for feat in e.explanation:
            assert set(feat) == {"feature", "value", "expected", "deviation"}
        assert e.reading == reading_dict(to_batch(cols), row)
        assert e.detected_ms == NOW_MS
        assert set(e.model_versions) == {"nowcast", "detectors", "online"}
    assert len({e.event_id for e in flat.anomalies}) == len(flat.anomalies)


@pytest.mark.parametrize("emit_threshold", [0.2, 0.5, 0.8])
def test_event_severity_agrees_with_its_score_whatever_the_emit_threshold(
    emit_threshold: float,
) -> None:
    cols = daily_load([("m", "meter")], days=4, seed=3)
    for k, factor in enumerate((3.0, 1.15, 1.2, 1.25, 1.3, 1.5, 1.18, 1.22)):
        cols["value"][200 + 12 * k] *= factor  # a big spike, then small ones, a cooldown apart
    params = ProcessorParams(emit_threshold=emit_threshold)
    _, flat = run([to_batch(cols)], params)
    assert flat.anomalies
    th = dict(params.severity_thresholds)
    for e in flat.anomalies:
        assert e.score >= max(emit_threshold, th["info"]) - 1e-4
        assert e.score >= th[e.severity] - 1e-4
        higher = SEVERITIES[SEVERITIES.index(e.severity) + 1 :]
        assert all(e.score < th[h] + 1e-4 for h in higher), (e.score, e.severity)


def test_warm_up_a_new_entity_is_not_scored_for_its_first_readings() -> None:
    cols = daily_load([("w", "meter")], days=1, seed=8)
    cols["value"][3] = 100.0  # a wild value during warm-up raises nothing
    b = to_batch(cols)
    proc, flat = run(one_by_one(b))
    assert np.all(np.isnan(flat.score[: P.warmup])) and np.all(flat.severity[: P.warmup] == -1)
    assert np.all(np.isfinite(flat.score[P.warmup :]))
    assert flat.counters["warming_up"] == P.warmup
    assert all(step_of(e.ts_ms) >= P.warmup for e in flat.anomalies)


def test_an_entity_first_seen_mid_stream_warms_up_then_is_scored(scenario: Scenario) -> None:
    rows = rows_of(scenario.cols, "newcomer")
    score = scenario.flat.score[rows]
    assert np.all(np.isnan(score[: P.warmup]))
    assert np.all(np.isfinite(score[P.warmup :]))
    assert scenario.proc.entities == 10
    # and a brand-new entity arriving with one reading next to known ones
    res = scenario.proc.process_batch(
        batch(
            [
                ("c1", "meter", int(scenario.cols["ts_ms"][-1]) + STEP_MS, 2.0),
                ("brand-new", "substation", START_MS, 40.0),
            ]
        ),
        NOW_MS,
    )
    assert np.isfinite(res.score[0]) and np.isnan(res.score[1])
    assert res.counters["warming_up"] == 1


@pytest.mark.parametrize("value", [0.0, 1.5, 1e6])
def test_a_constant_series_raises_no_alarm_storm_and_no_nan(value: float) -> None:
    n = 3 * 96
    b = batch([("k", "meter", T0 + i * STEP_MS, value) for i in range(n)])
    with np.errstate(all="raise"):  # no division by zero, no invalid operation, anywhere
        _, flat = run([b])
    assert np.all(np.isfinite(flat.score[P.warmup :]))
    assert len(flat.anomalies) <= 1, [(step_of(e.ts_ms), e.fired) for e in flat.anomalies]
    fc = flat.forecasts
    assert np.all(np.isfinite(fc["p10"])) and np.all(np.isfinite(fc["p90"]))
    assert np.all(fc["p10"] <= fc["p50"]) and np.all(fc["p50"] <= fc["p90"])


def test_a_varying_meter_that_gets_stuck_is_flagged_and_recovers() -> None:
    cols = daily_load([("m", "meter")], days=2, seed=13)
    r = np.arange(120, 140)
    cols["value"][r] = cols["value"][r[0]]
    _, flat = run([to_batch(cols)])
    stuck = [e for e in flat.anomalies if 120 <= step_of(e.ts_ms) < 140]
    assert stuck and "stuck" in stuck[0].fired
    # after it resumes varying, no more stuck events
    assert not [e for e in flat.anomalies if step_of(e.ts_ms) >= 150 and "stuck" in e.fired]


def test_nan_in_optional_channels_is_fine() -> None:
    cols = daily_load([("m", "meter"), ("f", "feeder"), ("bare", "meter")], days=2, seed=17)
    rng = np.random.default_rng(0)
    holes = rng.random(len(cols["ts_ms"])) < 0.3
    cols["voltage"][holes] = np.nan
    cols["frequency"][holes] = np.nan
    bare = rows_of(cols, "bare")
    for name in ("reactive", "voltage", "current", "frequency", "temperature"):
        cols[name][bare] = np.nan
    b = to_batch(cols)
    with np.errstate(invalid="raise", divide="raise"):
        _, flat = run([b])
    scored = np.isfinite(flat.score)
    assert scored.sum() == len(b) - 3 * P.warmup
    assert len(flat.anomalies) <= 2
    for name in ("p10", "p50", "p90"):
        assert np.all(np.isfinite(flat.forecasts[name]))
    for e in flat.anomalies:
        assert all(np.isfinite(v) for v in e.reading.values() if isinstance(v, float))


# -- forecasts ---------------------------------------------------------------------------------
def test_forecast_rows_quantiles_and_targets(scenario: Scenario) -> None:
    cols, flat, fc = scenario.cols, scenario.flat, scenario.flat.forecasts
    k = len(P.horizons_s)
    assert np.all(np.isfinite(fc["p50"]))
    assert np.all(fc["p10"] <= fc["p50"]) and np.all(fc["p50"] <= fc["p90"])
    np.testing.assert_array_equal(fc["target_ms"], fc["issued_ms"] + fc["horizon_s"] * 1000)
    # one row per (reading, horizon), in input order, horizons in parameter order
    rows = flat.forecast_rows
    assert np.all(np.diff(rows) >= 0)
    np.testing.assert_array_equal(fc["horizon_s"], np.tile(P.horizons_s, rows.size // k))
    np.testing.assert_array_equal(rows[::k], np.unique(rows))
    np.testing.assert_array_equal(fc["issued_ms"], cols["ts_ms"][rows])
    np.testing.assert_array_equal(fc["entity"], cols["entity"][rows])
    np.testing.assert_array_equal(fc["kind"], cols["kind"][rows])
    # every reading of an entity from its forecast_min-th on, and none before
    for entity in ("c1", "newcomer"):
        ent_rows = rows_of(cols, entity)
        with_fc = np.isin(ent_rows, rows)
        assert not with_fc[: P.forecast_min - 1].any() and with_fc[P.forecast_min - 1 :].all()
    assert all("@" in m for m in flat.models)


def test_forecasts_never_use_a_later_reading_of_the_same_batch() -> None:
    cols = daily_load([("m", "meter"), ("f", "feeder")], days=1, seed=19)
    b = to_batch(cols)
    _, whole = run([b])
    for i in (5, 17, 60, 150):
        _, prefix = run([b.take(np.arange(i + 1))])
        mine = whole.forecast_rows == i
        assert mine.any()
        for name in ("p10", "p50", "p90", "target_ms"):
            np.testing.assert_array_equal(
                whole.forecasts[name][mine], prefix.forecasts[name][prefix.forecast_rows == i]
            )


# -- events ------------------------------------------------------------------------------------
def test_event_id_is_deterministic_and_distinct() -> None:
    base = event_id("meter", "m1", T0)
    assert base == event_id("meter", "m1", T0)
    assert len(base) == 32 and int(base, 16) >= 0
    others = {
        event_id("feeder", "m1", T0),
        event_id("meter", "m2", T0),
        event_id("meter", "m1", T0 + 1),
        event_id("meter", "m1\x1f", T0),
    }
    assert base not in others and len(others) == 4


def test_reading_dict_uses_contract_names_and_leaves_out_absent_channels() -> None:
    b = batch(
        [
            {"entity": "m1", "kind": "meter", "ts_ms": T0, "value": 1.5, "voltage": 229.0},
            {
                "entity": "f1",
                "kind": "feeder",
                "ts_ms": T0,
                "value": 4.0,
                "voltage": 11.1,
                "frequency": 50.01,
                "quality": "good",
            },
            {"entity": "m2", "kind": "meter", "ts_ms": T0, "value": 0.0, "frequency": 50.0},
        ]
    )
    assert reading_dict(b, 0) == {"meter_id": "m1", "ts": T0, "kw": 1.5, "voltage_v": 229.0}
    assert reading_dict(b, 1) == {
        "asset_id": "f1",
        "asset_kind": "feeder",
        "ts": T0,
        "p_mw": 4.0,
        "voltage_kv": 11.1,
        "frequency_hz": 50.01,
        "quality": "good",
    }
    # meters have no frequency field in the contract, and a zero reading is kept
    assert reading_dict(b, 2) == {"meter_id": "m2", "ts": T0, "kw": 0.0}


def test_sustained_sag_stays_anomalous_and_is_one_incident() -> None:
    """A four-hour voltage sag is not learned as normal while it lasts, yet yields one event and
    one high score: the incident continues while readings stay above threshold, and those that
    are no news are shown below it. Its recovery is not flagged."""
    cols = daily_load(entities=(("m1", "meter"),), days=5.0)
    start = 4 * 96 + 40  # day 5, 10:00
    sag = slice(start, start + 16)
    cols["voltage"][sag] *= 0.85
    result = GridProcessor(P).process_batch(to_batch(cols), NOW_MS)
    assert result.score[sag][0] >= P.emit_threshold
    assert np.all(result.score[sag][1:] < P.emit_threshold)
    after = result.score[start + 18 : start + 30]
    assert np.all(after < P.emit_threshold)  # the return to normal is not an anomaly
    in_sag = [
        e for e in result.anomalies if cols["ts_ms"][sag][0] <= e.ts_ms <= cols["ts_ms"][sag][-1]
    ]
    assert len(in_sag) == 1
    assert in_sag[0].explanation[0]["feature"] == "voltage_v"
    assert result.counters["suppressed_cooldown"] >= 15


def test_fleet_residual_drift_emits_one_event_and_none_on_clean_data() -> None:
    entities = (("m1", "meter"), ("m2", "meter"), ("m3", "meter"), ("m4", "meter"))
    clean = daily_load(entities, days=10)
    assert GridProcessor(P).process_batch(to_batch(clean), NOW_MS).drift_events == []
    noisy = daily_load(entities, days=10)
    cut = len(noisy["ts_ms"]) * 6 // 10
    noisy["value"][cut:] += np.random.default_rng(1).normal(0, 0.2, len(noisy["ts_ms"]) - cut)
    result = GridProcessor(P).process_batch(to_batch(noisy), NOW_MS)
    assert len(result.drift_events) >= 1
    ev = result.drift_events[0]
    assert ev.entity_kind == "meter" and ev.entity_id == "*" and ev.detector == "adwin_residual"
    assert noisy["ts_ms"][cut] <= ev.ts_ms <= noisy["ts_ms"][cut] + 6 * HOUR_MS
    assert ev.detail["mean_abs_z_after"] > ev.detail["mean_abs_z_before"]
    assert result.counters["drift_events"] == len(result.drift_events)
    # the same events whatever the batch boundaries
    proc = GridProcessor(P)
    b = to_batch(noisy)
    pieces = split(b, [len(b) // 3, 2 * len(b) // 3])
    events = [e for piece in pieces for e in proc.process_batch(piece, NOW_MS).drift_events]
    assert events == result.drift_events
