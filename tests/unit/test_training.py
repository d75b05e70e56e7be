"""Training, the loaded ensemble and hot reload: behaviour, not scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.artifacts import MANIFEST, load_model_set, save_model_set
from models.ensemble import GATE_FILE, load_ensemble
from models.exceptions import ArtifactError, IncompatibleModel, TamperedArtifact
from models.features import FEATURE_NAMES
from models.params import ProcessorParams
from models.processor import GridProcessor
from models.promotion import read_current
from models.training import record_history, train_model_set
from streams.config import ProcessingSettings, load_settings
from streams.ops.monitor import Monitor
from streams.runtime.runner import StreamRunner
from streams.state.tasks import TaskSet
from tests.unit.builders import NOW_MS, daily_load, split, to_batch


def pieces(batch, n: int):  # noqa: ANN001, ANN201 - n nearly equal batches
    return split(batch, [len(batch) * k // n for k in range(1, n)])


P = ProcessorParams(horizons_s=(900, 3600))
ENTITIES = (("m1", "meter"), ("m2", "meter"), ("f1", "feeder"))


def _history(days: float = 8.0, seed: int = 3):
    return to_batch(daily_load(ENTITIES, days=days, seed=seed))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    train_model_set(pieces(_history(), 6), P, root, max_iter=40)
    return root


def test_recorder_joins_forecasts_with_their_actual_readings() -> None:
    batch = _history(days=2)
    rec = record_history([batch], P)
    for h in P.horizons_s:
        data = rec.dataset(h)
        steps = h // 900
        # every forecast whose target is a later reading of the same entity, minus warm-up
        per_entity = len(batch) // len(ENTITIES) - P.forecast_min + 1 - steps
        assert len(data) == per_entity * len(ENTITIES)
        assert data.x.shape == (len(data), len(FEATURE_NAMES))
        np.testing.assert_allclose(data.base + data.ref * data.y, data.actual)


def test_training_writes_a_verified_set_and_promotes_the_first(store: Path) -> None:
    pointer = read_current(store)
    assert pointer is not None
    loaded = load_model_set(store / pointer.dir)
    assert list(loaded.manifest.feature_names) == list(FEATURE_NAMES)
    assert tuple(loaded.manifest.horizons_s) == P.horizons_s
    for key in ("validation_error", "baseline_error", "h900_validation_mae", "h3600_baseline_mae"):
        assert key in loaded.manifest.metrics
    assert GATE_FILE in loaded.artifacts


def test_a_worse_set_is_not_promoted(store: Path) -> None:
    before = read_current(store)
    path, metrics, decision = train_model_set(pieces(_history(), 6), P, store, max_iter=1)
    assert decision is not None and not decision.promoted
    assert metrics["validation_error"] > before.validation_error  # type: ignore[union-attr]
    assert read_current(store) == before
    assert (path / MANIFEST).is_file()  # saved all the same, for inspection


def test_ensemble_forecasts_are_ordered_named_and_split_invariant(store: Path) -> None:
    ensemble = load_ensemble(store)
    batch = _history(days=9, seed=11)
    whole = GridProcessor(P, ensemble=ensemble).process_batch(batch, NOW_MS)
    proc = GridProcessor(P, ensemble=ensemble)
    parts = [proc.process_batch(b, NOW_MS) for b in pieces(batch, 7)]
    fc = whole.forecasts
    assert fc.model == ensemble.ref == proc.model
    assert np.all(fc.p10 <= fc.p50) and np.all(fc.p50 <= fc.p90)
    assert np.all(np.isfinite(fc.p50))
    np.testing.assert_array_equal(fc.p50, np.concatenate([r.forecasts.p50 for r in parts]))
    baseline = GridProcessor(P).process_batch(batch, NOW_MS).forecasts
    assert not np.allclose(baseline.p50, fc.p50)  # the ensemble does change the forecasts
    np.testing.assert_array_equal(baseline.target_ms, fc.target_ms)


def test_constant_series_and_new_entities_get_finite_forecasts(store: Path) -> None:
    cols = daily_load((("flat", "meter"),), days=3)
    cols["value"][:] = 5.0
    res = GridProcessor(P, ensemble=load_ensemble(store)).process_batch(to_batch(cols), NOW_MS)
    assert len(res.forecasts) > 0
    for name in ("p10", "p50", "p90"):
        assert np.all(np.isfinite(getattr(res.forecasts, name)))


def test_a_set_trained_on_other_features_is_refused(tmp_path: Path) -> None:
    path = save_model_set(
        tmp_path,
        "other",
        {GATE_FILE: {"900": [0.0] * 8}},
        feature_names=("a", "b"),
        horizons_s=(900,),
        training_span=(_dt(0), _dt(1)),
        metrics={"validation_error": 1.0},
    )
    with pytest.raises(IncompatibleModel):
        load_ensemble(path)


def test_an_incomplete_set_is_refused(tmp_path: Path) -> None:
    path = save_model_set(
        tmp_path,
        "partial",
        {GATE_FILE: {"900": [0.0] * 8}},
        feature_names=FEATURE_NAMES,
        horizons_s=(900,),
        training_span=(_dt(0), _dt(1)),
        metrics={"validation_error": 1.0},
    )
    with pytest.raises(ArtifactError, match="no model file"):
        load_ensemble(path)


def test_a_tampered_artifact_is_refused(store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    pointer = read_current(copy)
    victim = next((copy / pointer.dir).glob("gbm_*.skops"))  # type: ignore[union-attr]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(TamperedArtifact, match=victim.name):
        load_ensemble(copy)


def test_runner_hot_reloads_a_promoted_set_and_keeps_it_when_the_next_is_broken(
    store: Path, tmp_path: Path
) -> None:
    import shutil

    live = tmp_path / "live"
    live.mkdir()
    settings = load_settings(
        processing=ProcessingSettings(horizons_s=P.horizons_s, models_dir=live)
    )
    processor = TaskSet(settings.processing.params())  # what `gridstream run` serves with
    monitor = Monitor(processor)
    runner = StreamRunner(settings, processor, monitor=monitor)
    assert runner.reload_models() is False  # an empty store: the baseline serves
    assert processor.model.startswith("baseline")

    pointer = read_current(store)
    shutil.copytree(store / pointer.dir, live / pointer.dir)  # type: ignore[union-attr]
    shutil.copy(store / "current.json", live / "current.json")
    assert runner.reload_models() is True
    assert processor.model == pointer.ref  # type: ignore[union-attr]
    assert processor.model_versions["nowcast"] == pointer.ref  # what events and /models report
    task = processor.task(("meter", 0))  # a partition assigned after the reload serves it too
    assert task.processor.model == pointer.ref  # type: ignore[union-attr]
    assert not any("model store" in r for r in monitor.health.evaluate().reasons)

    # a newer promoted set whose file was damaged after promotion: the old one keeps serving
    bad = live / "nowcast-ensemble-99"
    shutil.copytree(live / pointer.dir, bad)  # type: ignore[union-attr]
    victim = next(bad.glob("gbm_*.skops"))
    victim.write_bytes(victim.read_bytes()[:-10])
    text = (live / "current.json").read_text().replace(pointer.dir, bad.name)  # type: ignore[union-attr]
    (live / "current.json").write_text(text)
    assert runner.reload_models() is False
    assert processor.model == pointer.ref  # type: ignore[union-attr]
    report = monitor.health.evaluate()
    assert any("model store" in reason for reason in report.reasons)


def _dt(day: int):
    from datetime import UTC, datetime, timedelta

    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day)


# -- the batch anomaly model of the set ----------------------------------------------------------
def test_training_adds_a_batch_anomaly_model_that_fuses_and_explains(store: Path) -> None:
    from models.batch_anomaly import ANOMALY_FILE, ANOMALY_META, DETECTOR

    pointer = read_current(store)
    assert pointer is not None
    loaded = load_model_set(store / pointer.dir)
    assert {ANOMALY_FILE, ANOMALY_META} <= set(loaded.manifest.files)  # hashed like the rest
    ensemble = load_ensemble(store)
    assert ensemble.anomaly is not None
    cols = daily_load(ENTITIES, days=9, seed=11)
    spike = np.flatnonzero(cols["entity"] == "m1")[8 * 96 + 30]
    cols["value"][spike] *= 4.0
    batch = to_batch(cols)
    proc = GridProcessor(P, ensemble=ensemble)
    res = proc.process_batch(batch, NOW_MS)
    assert proc.model_versions[DETECTOR] == ensemble.ref
    hit = [e for e in res.anomalies if e.ts_ms == cols["ts_ms"][spike] and e.entity_id == "m1"]
    assert hit, "the spike raised no event"
    # it took part: beyond its training distribution's calibration quantile
    assert DETECTOR in hit[0].detectors and hit[0].detectors[DETECTOR] > 0.2
    # in the explanation's top three: this spike is no departure of three other features
    assert "iforest_anomaly_score" in [f["feature"] for f in hit[0].explanation], hit[0].explanation
    # a pure function of each reading's features: the same whatever the batch cuts
    again = GridProcessor(P, ensemble=ensemble)
    parts = [again.process_batch(b, NOW_MS) for b in pieces(batch, 9)]
    np.testing.assert_array_equal(res.score, np.concatenate([r.score for r in parts]))
    # without the set, no such detector
    plain = GridProcessor(P).process_batch(batch, NOW_MS)
    assert all(DETECTOR not in e.detectors for e in plain.anomalies)


def test_a_tampered_batch_anomaly_model_is_refused(store: Path, tmp_path: Path) -> None:
    import shutil

    from models.batch_anomaly import ANOMALY_FILE

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    pointer = read_current(copy)
    victim = copy / pointer.dir / ANOMALY_FILE  # type: ignore[union-attr]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(TamperedArtifact, match=ANOMALY_FILE):
        load_ensemble(copy)


def test_a_batch_anomaly_model_on_other_features_is_refused(store: Path, tmp_path: Path) -> None:
    from models.batch_anomaly import ANOMALY_META

    pointer = read_current(store)
    loaded = load_model_set(store / pointer.dir)  # type: ignore[union-attr]
    artifacts = dict(loaded.artifacts)
    meta = dict(artifacts[ANOMALY_META])  # type: ignore[call-overload]
    meta["feature_names"] = [*meta["feature_names"][:-1], "something_else"]
    artifacts[ANOMALY_META] = meta
    path = save_model_set(
        tmp_path,
        "other-anomaly",
        artifacts,
        feature_names=FEATURE_NAMES,
        horizons_s=P.horizons_s,
        training_span=(_dt(0), _dt(1)),
        metrics={"validation_error": 1.0},
    )
    with pytest.raises(IncompatibleModel, match="something_else"):
        load_ensemble(path)


def test_the_batch_anomaly_model_handles_nan_features() -> None:
    from models.batch_anomaly import ANOMALY_FEATURES, BatchAnomalyModel

    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0.0, 1.0, (2000, len(ANOMALY_FEATURES))))
    x[::7, 2] = np.nan  # a detector with no memory yet
    x[:, 5] = np.nan  # one never has a value in this history
    model = BatchAnomalyModel.fit(x, seed=1)
    probe = np.vstack([np.full(len(ANOMALY_FEATURES), np.nan), x[:3], np.full(x.shape[1], 9.0)])
    s = model.score(probe)
    assert np.all(np.isfinite(s)) and np.all((s >= 0.0) & (s <= 1.0))
    assert s[-1] > 0.5 > s[0]  # far outside the training cloud vs. its medians


def test_a_set_written_before_skops_with_pickled_models_still_serves(
    store: Path, tmp_path: Path
) -> None:
    from models.artifacts import load_model_set, save_model_set
    from models.ensemble import NowcastEnsemble

    pointer = read_current(store)
    current = load_model_set(store / pointer.dir)  # type: ignore[union-attr]
    assert any(name.endswith(".skops") for name in current.artifacts)  # new sets: no pickle
    m = current.manifest
    legacy = save_model_set(
        tmp_path,
        "legacy",
        {name.replace(".skops", ".pkl"): obj for name, obj in current.artifacts.items()},
        feature_names=m.feature_names,
        horizons_s=m.horizons_s,
        training_span=(m.training_span.start, m.training_span.end),
        metrics=m.metrics,
    )
    old, new = NowcastEnsemble(load_model_set(legacy)), NowcastEnsemble(current)
    for h in new.horizons:
        assert [type(x) for x in old.models[h]] == [type(x) for x in new.models[h]]
