"""Core state as data: the snapshot holds arrays and typed JSON, restores exactly, and refuses
what it cannot restore exactly (old pickles, other state columns, another river) without running
any of it."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from models import snapshot
from models.processor import GridProcessor
from models.snapshot import SnapshotError
from tests.unit.builders import NOW_MS, daily_load, to_batch
from tests.unit.test_processor import P_HST


@pytest.fixture(scope="module")
def warm() -> GridProcessor:
    """A processor whose river trees have pivoted and whose ADWIN has seen thousands of values."""
    cols = daily_load([(f"m{i}", "meter") for i in range(8)], days=4.0, seed=3)
    proc = GridProcessor(P_HST)
    proc.process_batch(to_batch(cols), NOW_MS)
    assert proc.online.model.trees and not proc.online.model._first_window
    assert proc.drift.detectors
    return proc


def arrays_of(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(blob: bytes, edit) -> bytes:  # noqa: ANN001 - edits (arrays, meta) in place
    arrays = arrays_of(blob)
    meta = json.loads(arrays["meta.json"].tobytes())
    edit(arrays, meta)
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_a_snapshot_is_plain_arrays_and_json_and_loads_without_pickle(warm: GridProcessor) -> None:
    arrays = arrays_of(warm.snapshot())  # allow_pickle=False: an object array would fail here
    assert all(a.dtype != object for a in arrays.values())
    meta = json.loads(arrays["meta.json"].tobytes())
    assert meta["format"] == snapshot.FORMAT and meta["entities"] == warm.entities
    assert set(meta["columns"]) == set(warm.state.cols)


def test_restored_state_online_models_and_drift_equal_the_original(warm: GridProcessor) -> None:
    back = GridProcessor.from_snapshot(warm.snapshot())
    for name, arr in warm.state.cols.items():
        np.testing.assert_array_equal(back.state.cols[name][: warm.entities], arr[: warm.entities])
    assert back.state.keys == warm.state.keys and back.state.kinds == warm.state.kinds
    a, b = warm.online.model, back.online.model
    assert (a.counter, a._first_window) == (b.counter, b._first_window)
    for ta, tb in zip(a._tree_nodes, b._tree_nodes, strict=True):
        for na, nb in zip(ta, tb, strict=True):
            assert (na.l_mass, na.r_mass) == (nb.l_mass, nb.r_mass)
            assert getattr(na, "feature", None) == getattr(nb, "feature", None)
            assert getattr(na, "threshold", None) == getattr(nb, "threshold", None)
    for kind, det in warm.drift.detectors.items():
        other = back.drift.detectors[kind]
        assert (det.width, det.estimation, det.variance) == (
            other.width,
            other.estimation,
            other.variance,
        )
    assert back.snapshot() == warm.snapshot()


def test_an_old_pickle_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # noqa: ANN204 - what a hostile or old pickle could do
            return (Path.write_text, (marker, "code ran"))

    with pytest.raises(SnapshotError, match="not a gridstream state snapshot"):
        GridProcessor.from_snapshot(pickle.dumps({"format": 2, "state": Payload()}))
    assert not marker.exists()


@pytest.mark.parametrize("change", ["column_added", "column_removed", "column_reshaped"])
def test_state_columns_of_another_version_are_refused_with_what_differs(
    warm: GridProcessor, change: str
) -> None:
    def edit(arrays: dict[str, np.ndarray], meta: dict) -> None:
        if change == "column_added":  # written by a newer version with one more column
            arrays["col.future"] = np.zeros(warm.entities)
            meta["columns"]["future"] = {"dtype": "<f8", "shape": []}
        elif change == "column_removed":  # written by an older version without lvl_dev
            del arrays["col.lvl_dev"]
            del meta["columns"]["lvl_dev"]
        else:
            meta["columns"]["count"]["shape"] = [2]

    blob = rewrite(warm.snapshot(), edit)
    with pytest.raises(SnapshotError, match="state columns differ") as err:
        GridProcessor.from_snapshot(blob)
    name = {"column_added": "future", "column_removed": "lvl_dev", "column_reshaped": "count"}
    assert name[change] in str(err.value)


def test_a_snapshot_of_another_river_version_is_rebuilt_not_guessed(warm: GridProcessor) -> None:
    blob = rewrite(warm.snapshot(), lambda arrays, meta: meta.update(river="0.1.0"))
    with pytest.raises(SnapshotError, match="river 0.1.0"):
        GridProcessor.from_snapshot(blob)


def test_unknown_or_missing_parameters_are_refused(warm: GridProcessor) -> None:
    blob = rewrite(warm.snapshot(), lambda arrays, meta: meta["params"].update(novel=1))
    with pytest.raises(SnapshotError, match="novel"):
        GridProcessor.from_snapshot(blob)
