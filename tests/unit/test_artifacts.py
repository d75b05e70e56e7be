"""Model sets on disk: round trip, refusal of anything unverified, the promotion rule, hot reload.

The trap artifact is a pickle whose unpickling writes a marker file: every refusal test checks
the marker is absent, which proves the loader verified all hashes before it unpickled anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from models.artifacts import (
    CURRENT,
    MANIFEST,
    PROMOTIONS,
    load_model_set,
    save_model_set,
    verify_model_set,
)
from models.exceptions import (
    ArtifactError,
    IncompatibleModel,
    ManifestError,
    TamperedArtifact,
)
from models.promotion import ModelStoreWatcher, promote_if_better, read_current
from schemas.exceptions import ContractError, GridstreamError

FEATURES = ("kw", "kw_lag_1", "hour_sin", "hour_cos")
SPAN = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
T0 = datetime(2024, 3, 2, 12, tzinfo=UTC)


def _spring(marker: str) -> str:
    Path(marker).write_text("unpickled")
    return "sprung"


class _Trap:
    """Unpickling this calls ``_spring``: the marker file shows whether anything was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_spring, (self.marker,))


def _regressor() -> LinearRegression:
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    return LinearRegression().fit(x, x @ np.array([0.5, -1.0, 2.0, 0.25]) + 3.0)


def _save(store: Path, error: float, trap: Path | None = None, name: str = "gs") -> Path:
    artifacts: dict[str, object] = {
        "model.pkl": _regressor(),
        "z_weights.npy": np.linspace(0.0, 1.0, 64),
        "calibration.json": {"p10": -1.28, "p90": 1.28},
        "nested/readme.txt": b"raw bytes kept verbatim",
    }
    if trap is not None:
        artifacts["a_trap.pkl"] = _Trap(trap)  # sorts first: a naive loader would unpickle it
    return save_model_set(
        store,
        name,
        artifacts,
        feature_names=FEATURES,
        horizons_s=(900, 3600),
        training_span=SPAN,
        metrics={"validation_error": error, "mae_900": error * 0.8},
        params={"alpha": 0.1},
        created=T0,
    )


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(vdir: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads((vdir / MANIFEST).read_text())
    change(doc)
    (vdir / MANIFEST).write_text(json.dumps(doc))


# -- save and load ------------------------------------------------------------------------------
def test_round_trip_sklearn_numpy_json_bytes(tmp_path: Path) -> None:
    vdir = _save(tmp_path, 1.5)
    loaded = load_model_set(vdir)
    x = np.ones((3, 4))
    np.testing.assert_allclose(loaded["model.pkl"].predict(x), _regressor().predict(x))
    np.testing.assert_array_equal(loaded["z_weights.npy"], np.linspace(0.0, 1.0, 64))
    assert loaded["calibration.json"] == {"p10": -1.28, "p90": 1.28}
    assert loaded["nested/readme.txt"] == b"raw bytes kept verbatim"
    assert (vdir.name, loaded.ref, loaded.validation_error) == ("gs-1", "gs@1", 1.5)
    m = loaded.manifest
    assert m.feature_names == FEATURES and m.horizons_s == (900, 3600)
    assert m.created == T0 and m.training_span.start == SPAN[0]
    assert set(m.library_versions) >= {"python", "numpy", "scikit-learn"}
    for rel, digest in m.files.items():
        assert hashlib.sha256((vdir / rel).read_bytes()).hexdigest() == digest
    raw = json.loads((vdir / MANIFEST).read_text())
    assert raw["created"] == "2024-03-02T12:00:00Z" and raw["format"] == 1
    assert loaded.warnings == ()  # same libraries as at training time
    json.dumps(loaded.describe())  # /models can serve it as is


def test_versions_increase_and_an_existing_directory_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "gs-1").mkdir()  # e.g. a save that crashed: never reused
    (tmp_path / "gs-1" / "left.bin").write_bytes(b"keep me")
    first = _save(tmp_path, 2.0)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    second = _save(tmp_path, 1.0)
    assert (first.name, second.name) == ("gs-2", "gs-3")
    assert (tmp_path / "gs-1" / "left.bin").read_bytes() == b"keep me"
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_model_set(tmp_path / "gs-1")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metrics": {"mae": 1.0}}, ManifestError, "validation_error"),
        ({"metrics": {"validation_error": float("nan")}}, ManifestError, "metrics"),
        ({"feature_names": ("kw", "kw")}, ManifestError, "repeated"),
        ({"training_span": (SPAN[1], SPAN[0])}, ManifestError, "not after"),
        ({"training_span": (datetime(2024, 1, 1), SPAN[1])}, ManifestError, "timezone"),  # noqa: DTZ001
        ({"artifacts": {"../x.pkl": 1}}, ArtifactError, "safe relative path"),
        ({"artifacts": {"/etc/x.pkl": 1}}, ArtifactError, "safe relative path"),
        ({"artifacts": {"manifest.json": b"{}"}}, ArtifactError, "safe relative path"),
        ({"artifacts": {"w.npy": [1, 2]}}, ArtifactError, "needs a .skops"),
    ],
)
def test_save_validates_everything_before_writing(
    tmp_path: Path, kwargs: dict, error: type[Exception], match: str
) -> None:
    args: dict = {
        "artifacts": {"model.pkl": _regressor()},
        "feature_names": FEATURES,
        "horizons_s": (900,),
        "training_span": SPAN,
        "metrics": {"validation_error": 1.0},
    } | kwargs
    with pytest.raises(error, match=match):
        save_model_set(tmp_path / "store", "gs", args.pop("artifacts"), **args)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


# -- refusals: nothing is unpickled unless every hash matches ----------------------------------
def test_the_trap_works_when_the_set_is_intact(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    loaded = load_model_set(_save(tmp_path / "store", 1.0, trap=marker))
    assert loaded["a_trap.pkl"] == "sprung" and marker.exists()


@pytest.mark.parametrize("victim", ["a_trap.pkl", "z_weights.npy", "model.pkl"])
def test_tampered_file_is_refused_before_anything_is_unpickled(tmp_path: Path, victim: str) -> None:
    marker = tmp_path / "unpickled.marker"
    vdir = _save(tmp_path / "store", 1.0, trap=marker)
    expected = json.loads((vdir / MANIFEST).read_text())["files"][victim]
    _flip_byte(vdir / victim)
    with pytest.raises(TamperedArtifact, match=f"'{victim}'") as info:
        load_model_set(vdir)
    assert info.value.file == victim and info.value.expected == expected
    assert expected[:12] in str(info.value) and info.value.actual[:12] in str(info.value)
    assert not marker.exists()
    with pytest.raises(TamperedArtifact):
        verify_model_set(vdir)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    vdir = _save(tmp_path / "store", 1.0, trap=marker)
    data = (vdir / "model.pkl").read_bytes()
    (vdir / "model.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(TamperedArtifact, match="'model.pkl'"):
        load_model_set(vdir)
    assert not marker.exists()


def _swap_hashes(doc: dict) -> None:
    doc["files"]["model.pkl"] = doc["files"]["z_weights.npy"]


def _list_traversal(doc: dict) -> None:
    doc["files"]["../outside.pkl"] = "0" * 64


def _list_absolute(doc: dict) -> None:
    doc["files"]["/etc/passwd"] = "0" * 64


def _other_version(doc: dict) -> None:
    doc["version"] = 7


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (_swap_hashes, TamperedArtifact, "'model.pkl'"),
        (_list_traversal, ManifestError, "safe relative path"),
        (_list_absolute, ManifestError, "safe relative path"),
        (_other_version, ManifestError, "describes gs-7"),
        (lambda d: d.update(format=2), ManifestError, "format 2"),
        (lambda d: d.update(format="1"), ManifestError, "format '1'"),
        (lambda d: d.update(format=True), ManifestError, "format True"),
        (lambda d: d.pop("feature_names"), ManifestError, "feature_names: Field required"),
        (lambda d: d.update(surprise=1), ManifestError, "surprise"),
        (lambda d: d["metrics"].update(validation_error=-1), ManifestError, "validation_error"),
        (lambda d: d.update(created="2024-03-02T12:00:00"), ManifestError, "created"),
    ],
)
def test_a_manifest_that_lies_or_is_unknown_is_refused(
    tmp_path: Path, change: Callable[[dict], None], error: type[Exception], match: str
) -> None:
    marker = tmp_path / "unpickled.marker"
    vdir = _save(tmp_path / "store", 1.0, trap=marker)
    _edit_manifest(vdir, change)
    with pytest.raises(error, match=match):
        load_model_set(vdir)
    assert not marker.exists()


def test_listed_file_missing_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    vdir = _save(tmp_path / "store", 1.0, trap=marker)
    (vdir / "z_weights.npy").unlink()
    with pytest.raises(ManifestError, match=r"do not exist: \['z_weights.npy'\]"):
        load_model_set(vdir)
    assert not marker.exists()


def test_unlisted_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    vdir = _save(tmp_path / "store", 1.0, trap=marker)
    (vdir / "nested" / "extra.pkl").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(ManifestError, match=r"not in the manifest.*'nested/extra.pkl'"):
        load_model_set(vdir)
    assert not marker.exists()


def test_symlink_inside_a_set_is_refused(tmp_path: Path) -> None:
    vdir = _save(tmp_path / "store", 1.0)
    (vdir / "link.bin").symlink_to(vdir / "model.pkl")
    with pytest.raises(ManifestError, match="'link.bin' is not a regular file"):
        load_model_set(vdir)


def test_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    vdir = _save(tmp_path / "store", 1.0)
    (vdir / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="is not JSON"):
        load_model_set(vdir)


def test_errors_share_the_project_root_and_pickle() -> None:
    err = TamperedArtifact("gs-1", "model.pkl", "a" * 64, "b" * 64)
    # each root on its own: a union would pass for any GridstreamError
    assert isinstance(err, ArtifactError) and isinstance(err, ContractError)
    assert issubclass(ArtifactError, ContractError) and issubclass(ContractError, GridstreamError)
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert (again.file, str(again)) == ("model.pkl", str(err))
    inc = pickle.loads(pickle.dumps(IncompatibleModel("gs@1", ["a"], [], False)))  # noqa: S301
    assert inc.missing == ("a",)


# -- features -----------------------------------------------------------------------------------
def test_features_must_match_names_and_order(tmp_path: Path) -> None:
    loaded = load_model_set(_save(tmp_path, 1.0))
    loaded.check_features(list(FEATURES))
    with pytest.raises(IncompatibleModel, match=r"missing features \['hour_cos'\]") as info:
        loaded.check_features(["kw", "kw_lag_1", "hour_sin", "temp_c"])
    assert info.value.missing == ("hour_cos",) and info.value.unexpected == ("temp_c",)
    with pytest.raises(IncompatibleModel, match="another order") as info:
        loaded.check_features(list(reversed(FEATURES)))
    assert info.value.reordered and not info.value.missing
    with pytest.raises(IncompatibleModel, match=r"not trained on \['kw'\]"):
        loaded.check_features([*FEATURES, "kw"])


# -- promotion ----------------------------------------------------------------------------------
def _log(store: Path) -> list[dict]:
    return [json.loads(line) for line in (store / PROMOTIONS).read_text().splitlines()]


def test_promotion_rule_lower_validation_error_wins_strictly(tmp_path: Path) -> None:
    first = _save(tmp_path, 2.0)
    d1 = promote_if_better(tmp_path, first, now=T0)
    assert d1.promoted and "no current set" in d1.reason and d1.current is None
    assert read_current(tmp_path).dir == "gs-1"

    worse = _save(tmp_path, 2.5)
    d2 = promote_if_better(tmp_path, worse.name, now=T0)
    assert not d2.promoted and "not lower" in d2.reason
    assert (d2.candidate_error, d2.current_error, d2.current) == (2.5, 2.0, "gs-1")
    assert read_current(tmp_path).dir == "gs-1"

    better = _save(tmp_path, 1.0)
    d3 = promote_if_better(tmp_path, better, now=T0)
    assert d3.promoted and "1 < current 2" in d3.reason
    pointer = read_current(tmp_path)
    assert (pointer.dir, pointer.ref, pointer.validation_error) == ("gs-3", "gs@3", 1.0)

    equal = _save(tmp_path, 1.0)
    d4 = promote_if_better(tmp_path, equal, now=T0)
    assert not d4.promoted and "not lower" in d4.reason
    assert read_current(tmp_path).dir == "gs-3"

    again = promote_if_better(tmp_path, better, now=T0)
    assert not again.promoted and "already the current" in again.reason

    log = _log(tmp_path)
    assert [(e["candidate"], e["promoted"]) for e in log] == [
        ("gs-1", True),
        ("gs-2", False),
        ("gs-3", True),
        ("gs-4", False),
        ("gs-3", False),
    ]
    assert log[1]["reason"] == d2.reason and log[1]["decided_at"] == "2024-03-02T12:00:00Z"


def test_a_candidate_that_does_not_verify_is_never_promoted(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    store = tmp_path / "store"
    promote_if_better(store, _save(store, 2.0))
    bad = _save(store, 0.1, trap=marker)
    _flip_byte(bad / "z_weights.npy")
    decision = promote_if_better(store, bad)
    assert not decision.promoted and "failed verification" in decision.reason
    assert "'z_weights.npy'" in decision.reason and decision.candidate_error is None
    assert read_current(store).dir == "gs-1" and not marker.exists()
    assert _log(store)[-1]["promoted"] is False


def test_a_verified_candidate_replaces_a_current_set_that_no_longer_verifies(
    tmp_path: Path,
) -> None:
    current = _save(tmp_path, 1.0)
    promote_if_better(tmp_path, current)
    _flip_byte(current / "model.pkl")
    decision = promote_if_better(tmp_path, _save(tmp_path, 5.0))
    assert decision.promoted and "current set unusable" in decision.reason
    assert read_current(tmp_path).dir == "gs-2"


def test_force_rolls_back_but_still_verifies(tmp_path: Path) -> None:
    old = _save(tmp_path, 2.0)
    promote_if_better(tmp_path, old)
    promote_if_better(tmp_path, _save(tmp_path, 1.0))
    decision = promote_if_better(tmp_path, old, force=True)
    assert decision.promoted and "forced" in decision.reason
    assert read_current(tmp_path).dir == "gs-1"
    _flip_byte(old / "model.pkl")
    promote_if_better(tmp_path, _save(tmp_path, 3.0), force=True)
    assert not promote_if_better(tmp_path, old, force=True).promoted


def test_candidate_outside_the_store_is_an_error(tmp_path: Path) -> None:
    elsewhere = _save(tmp_path / "other", 1.0)
    (tmp_path / "store").mkdir()
    with pytest.raises(ArtifactError, match="not a directory of the store"):
        promote_if_better(tmp_path / "store", elsewhere)


def test_invalid_pointer_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / CURRENT).write_text(json.dumps({"format": 1, "dir": "../etc"}))
    with pytest.raises(ManifestError, match="current.json: invalid pointer"):
        read_current(tmp_path)


# -- hot reload ---------------------------------------------------------------------------------
def _bump(path: Path) -> None:
    """Force a visible mtime change even on coarse-mtime filesystems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_watcher_adopts_promotions_and_is_quiet_otherwise(tmp_path: Path) -> None:
    watcher = ModelStoreWatcher(tmp_path / "store", expected_features=FEATURES)
    assert watcher.poll() is None and watcher.last_error is None  # no store yet
    store = tmp_path / "store"
    promote_if_better(store, _save(store, 2.0))
    first = watcher.poll()
    assert first is not None and first.ref == "gs@1" and watcher.current is first
    assert watcher.poll() is None  # unchanged
    promote_if_better(store, _save(store, 1.0))
    second = watcher.poll()
    assert second is not None and second.ref == "gs@2"
    status = watcher.status()
    assert status["current"]["ref"] == "gs@2" and status["degraded"] is False
    json.dumps(status)


def test_watcher_keeps_the_previous_set_when_the_promoted_one_is_tampered(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    store = tmp_path / "store"
    promote_if_better(store, _save(store, 2.0))
    watcher = ModelStoreWatcher(store)
    assert watcher.poll() is not None
    newer = _save(store, 1.0, trap=marker)
    assert promote_if_better(store, newer).promoted
    marker.unlink()  # promotion loads the candidate, which springs the trap once
    _flip_byte(newer / "model.pkl")  # tampered after promotion, before the processor reloads
    assert watcher.poll() is None
    assert watcher.current is not None and watcher.current.ref == "gs@1"
    assert watcher.last_error is not None and "'model.pkl'" in watcher.last_error
    assert "keeping gs@1" in watcher.last_error and watcher.status()["degraded"] is True
    assert not marker.exists()
    assert watcher.poll() is None and watcher.last_error is not None  # not re-hashed every poll
    good = _save(store, 0.5)
    promote_if_better(store, good)
    adopted = watcher.poll()
    assert adopted is not None and adopted.ref == "gs@3" and watcher.last_error is None


def test_watcher_refuses_a_set_trained_on_other_features(tmp_path: Path) -> None:
    store = tmp_path / "store"
    promote_if_better(store, _save(store, 1.0))
    watcher = ModelStoreWatcher(store, expected_features=("kw", "voltage_v"))
    assert watcher.poll() is None and watcher.current is None
    assert "incompatible" in (watcher.last_error or "")
    _bump(store / CURRENT)  # touching the pointer retries
    assert watcher.poll() is None and "incompatible" in (watcher.last_error or "")


def test_watcher_survives_a_garbage_pointer(tmp_path: Path) -> None:
    store = tmp_path / "store"
    promote_if_better(store, _save(store, 1.0))
    watcher = ModelStoreWatcher(store)
    assert watcher.poll() is not None
    (store / CURRENT).write_text("garbage")
    _bump(store / CURRENT)
    assert watcher.poll() is None and watcher.current is not None
    assert "invalid pointer" in (watcher.last_error or "")
    later = T0 + timedelta(days=1)
    promote_if_better(store, _save(store, 0.5), now=later)  # the pointer is unusable: promoted
    assert watcher.poll() is not None and watcher.last_error is None


# -- scikit-learn models without pickle (skops) -------------------------------------------------
class _Foreign:
    """A type no gridstream model consists of: a .skops file naming it is refused."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_sklearn_models_round_trip_through_skops_exactly(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor, IsolationForest

    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 4))
    gbm = HistGradientBoostingRegressor(loss="quantile", quantile=0.9, max_iter=15).fit(
        x, x[:, 0] + rng.normal(size=300)
    )
    forest = IsolationForest(n_estimators=10, random_state=1).fit(x)
    vdir = save_model_set(
        tmp_path,
        "gs",
        {"gbm.skops": gbm, "forest.skops": forest},
        feature_names=FEATURES,
        horizons_s=(900,),
        training_span=SPAN,
        metrics={"validation_error": 1.0},
    )
    assert not (vdir / "gbm.skops").read_bytes().startswith(b"\x80")  # a zip, not a pickle
    loaded = load_model_set(vdir)
    np.testing.assert_array_equal(loaded["gbm.skops"].predict(x), gbm.predict(x))
    np.testing.assert_array_equal(loaded["forest.skops"].score_samples(x), forest.score_samples(x))


def test_a_skops_file_naming_a_type_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    vdir = save_model_set(
        tmp_path,
        "gs",
        {"odd.skops": _Foreign()},
        feature_names=FEATURES,
        horizons_s=(900,),
        training_span=SPAN,
        metrics={"validation_error": 1.0},
    )
    with pytest.raises(ArtifactError, match="_Foreign"):
        load_model_set(vdir)
