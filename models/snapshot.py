"""A processor's state as data: plain numpy arrays and typed JSON metadata in one ``.npz``.

No pickle is written or read: arrays are loaded with ``allow_pickle=False`` and the metadata is
JSON (entry ``meta.json``, stored as UTF-8 bytes). What each part holds:

- ``params``: every ``ProcessorParams`` field by name (tuples as lists); a field this version
  does not know, or one it lacks, refuses the snapshot.
- per-entity state: ``keys`` and ``kinds`` (strings) and one ``col.<name>`` array per column of
  ``EntityState``; the metadata lists every column with its dtype and per-entity shape. A
  snapshot whose columns differ from this version's (a column added, removed or reshaped by an
  upgrade) is refused, and the runner rebuilds the partition by replaying its log.
- the river HalfSpaceTrees: each tree's nodes in depth-first order (feature, threshold,
  l_mass, r_mass; trees are complete binary trees of ``hst_height``), the window counter and
  the gating counters. Restoring builds the same tree shape and overwrites every node.
- ADWIN per entity kind: its settings as JSON and the state river itself exports
  (``__getstate__`` of river's native ADWIN: bytes of numbers, no code), kept as a ``uint8`` array.

The river parts depend on river's internals, so the metadata names the river version, and a
snapshot written under another river version is refused (rebuilt by replay) rather than guessed
at. ``FORMAT`` changes whenever the layout does.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import river
from river import anomaly, drift
from river.tree.padded import make_padded_tree

from models.online import FEATURES, GatedHalfSpaceTrees
from models.params import ProcessorParams
from models.state import EntityState

if TYPE_CHECKING:
    from models.processor import GridProcessor

FORMAT = 3
_META = "meta.json"


class SnapshotError(ValueError):
    """A snapshot this version cannot restore exactly (other format, columns, river version)."""


def dumps(proc: GridProcessor) -> bytes:
    """The processor's state as the bytes of one ``.npz`` (arrays + ``meta.json``)."""
    arrays: dict[str, np.ndarray] = {}
    state = proc.state
    arrays["keys"] = np.array(state.keys, dtype=np.str_)
    arrays["kinds"] = np.array(state.kinds, dtype=np.str_)
    columns = {}
    for name, arr in state.cols.items():
        arrays[f"col.{name}"] = arr[: state.size]
        columns[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape[1:])}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "river": river.__version__,
        "params": _params_to_json(proc.params),
        "entities": state.size,
        "columns": columns,
        "online": _hst_dump(proc.online, arrays),
        "drift": _drift_dump(proc.drift, arrays),
    }
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def loads(cls: type[GridProcessor], blob: bytes) -> GridProcessor:
    """The processor ``dumps`` described; ``SnapshotError`` if this version cannot restore it."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # noqa: BLE001 - zip or npy errors of a foreign or old payload
        raise SnapshotError(f"not a gridstream state snapshot: {exc}") from exc
    if _META not in arrays:
        raise SnapshotError("not a gridstream state snapshot: no metadata")
    meta = json.loads(arrays.pop(_META).tobytes().decode())
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {meta.get('format')!r}, this version reads {FORMAT}")
    if meta.get("river") != river.__version__:
        raise SnapshotError(
            f"snapshot of river {meta.get('river')}, running river {river.__version__}: "
            "its online models are rebuilt by replay"
        )
    params = _params_from_json(meta["params"])
    state = _state_load(params, meta, arrays)
    proc = cls(params, state, _hst_load(params, meta["online"], arrays))
    proc.drift = _drift_load(proc.drift, meta["drift"], arrays)
    return proc


# -- params ------------------------------------------------------------------------------------
def _params_to_json(params: ProcessorParams) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _params_from_json(data: dict[str, Any]) -> ProcessorParams:
    names = {f.name for f in dataclasses.fields(ProcessorParams)}
    if set(data) != names:
        extra, missing = sorted(set(data) - names), sorted(names - set(data))
        raise SnapshotError(f"parameters differ: unknown {extra}, missing {missing}")
    return ProcessorParams(**{k: _tuples(v) for k, v in data.items()})


# -- per-entity columns ------------------------------------------------------------------------
def _state_load(
    params: ProcessorParams, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> EntityState:
    n = int(meta["entities"])
    fresh = EntityState(params, capacity=16)
    want = {name: (arr.dtype.str, list(arr.shape[1:])) for name, arr in fresh.cols.items()}
    got = {name: (c["dtype"], list(c["shape"])) for name, c in meta["columns"].items()}
    if want != got:
        added = sorted(want.keys() - got.keys())
        removed = sorted(got.keys() - want.keys())
        changed = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise SnapshotError(
            f"state columns differ from this version's: missing {added}, unknown {removed}, "
            f"other dtype or shape {changed}"
        )
    cols = {}
    for name, (dtype, shape) in want.items():
        arr = arrays.get(f"col.{name}")
        if arr is None or arr.dtype.str != dtype or list(arr.shape) != [n, *shape]:
            raise SnapshotError(f"state column {name!r} does not match its description")
        cols[name] = arr
    keys, kinds = arrays["keys"].tolist(), arrays["kinds"].tolist()
    if len(keys) != n or len(kinds) != n or len(set(keys)) != n:
        raise SnapshotError("entity keys do not match the state columns")
    return EntityState.restore(
        params, {"keys": [str(k) for k in keys], "kinds": [str(k) for k in kinds], "cols": cols}
    )


# -- river HalfSpaceTrees ----------------------------------------------------------------------
def _hst_dump(online: GatedHalfSpaceTrees, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    model = online.model
    out: dict[str, Any] = {
        "seen": online.seen,
        "learned": online.learned,
        "scored": online.scored,
        "counter": model.counter,
        "first_window": model._first_window,
        "trees": len(model.trees),
    }
    if not model.trees:
        return out
    feature, threshold, l_mass, r_mass = [], [], [], []
    for nodes in model._tree_nodes:
        for node in nodes:
            f = getattr(node, "feature", None)
            feature.append(-1 if f is None else FEATURES.index(f))
            threshold.append(getattr(node, "threshold", np.nan))
            l_mass.append(node.l_mass)
            r_mass.append(node.r_mass)
    arrays["hst.feature"] = np.array(feature, dtype=np.int16)
    arrays["hst.threshold"] = np.array(threshold, dtype=np.float64)
    arrays["hst.l_mass"] = np.array(l_mass, dtype=np.int64)
    arrays["hst.r_mass"] = np.array(r_mass, dtype=np.int64)
    return out


def _hst_load(
    params: ProcessorParams, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> GatedHalfSpaceTrees:
    online = GatedHalfSpaceTrees(params)
    online.seen, online.learned, online.scored = meta["seen"], meta["learned"], meta["scored"]
    model: anomaly.HalfSpaceTrees = online.model
    model.counter = int(meta["counter"])
    model._first_window = bool(meta["first_window"])
    if not meta["trees"]:
        return online
    if meta["trees"] != model.n_trees:
        raise SnapshotError(f"{meta['trees']} trees, these parameters make {model.n_trees}")
    model.trees = [
        make_padded_tree(
            limits={f: model.limits[f] for f in sorted(FEATURES)},
            height=model.height,
            padding=0.15,
            rng=model.rng,
            r_mass=0,
            l_mass=0,
        )
        for _ in range(model.n_trees)
    ]
    model._tree_nodes = [list(t.iter_dfs()) for t in model.trees]
    nodes = [node for tree in model._tree_nodes for node in tree]
    feature, threshold = arrays["hst.feature"], arrays["hst.threshold"]
    l_mass, r_mass = arrays["hst.l_mass"], arrays["hst.r_mass"]
    if not len(nodes) == len(feature) == len(threshold) == len(l_mass) == len(r_mass):
        raise SnapshotError(f"{len(feature)} tree nodes saved, the trees have {len(nodes)}")
    for node, f, t, lm, rm in zip(
        nodes, feature.tolist(), threshold.tolist(), l_mass.tolist(), r_mass.tolist(), strict=True
    ):
        if (f >= 0) != hasattr(node, "feature"):
            raise SnapshotError("saved tree nodes do not have the shape of these trees")
        if f >= 0:
            node.feature, node.threshold = FEATURES[f], t
        node.l_mass, node.r_mass = lm, rm
    return online


# -- river ADWIN -------------------------------------------------------------------------------
_ADWIN_SETTINGS = ("delta", "clock", "max_buckets", "min_window_length", "grace_period")


def _drift_dump(d: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    kinds = {}
    for i, (kind, det) in enumerate(sorted(d.detectors.items())):
        arrays[f"adwin.{i}"] = np.frombuffer(det._helper.__getstate__(), dtype=np.uint8)
        kinds[kind] = {
            "array": f"adwin.{i}",
            "fed": d.fed.get(kind, 0),
            "drift_detected": bool(det._drift_detected),
            **{k: getattr(det, k) for k in _ADWIN_SETTINGS},
        }
    return {
        "delta": d.delta,
        "min_change": d.min_change,
        "sample_every": d.sample_every,
        "kinds": kinds,
    }


def _drift_load(d: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    if (meta["delta"], meta["min_change"], meta["sample_every"]) != (
        d.delta,
        d.min_change,
        d.sample_every,
    ):
        raise SnapshotError("drift detector settings differ from these parameters")
    for kind, m in meta["kinds"].items():
        det = drift.ADWIN(**{k: m[k] for k in _ADWIN_SETTINGS})
        det._helper.__setstate__(arrays[m["array"]].tobytes())
        det._drift_detected = bool(m["drift_detected"])
        d.detectors[kind] = det
        d.fed[kind] = int(m["fed"])
    return d
