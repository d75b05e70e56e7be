"""Columns of the energy balance: one row per child (meter) and per parent (transformer, ...).

All state is numpy columns grown by doubling, so a closed interval is a handful of vectorised
operations over every child at once, and a checkpoint is the arrays themselves (``.npz`` with a
JSON header, no pickle). Readings land in a ring of ``slots`` open intervals per entity; a slot
remembers which interval it holds (``*_iv``), so a redelivered reading overwrites its own value
instead of adding to it: the balance is idempotent under at-least-once delivery.
"""

from __future__ import annotations

import io
import json

import numpy as np

from models import tails

TOD = 96  # time-of-day buckets of a child's profile (15 min)
SUB = 15  # sub-slots of a parent's interval (SCADA every minute at most)
FORMAT = 1


class BalanceSnapshotError(ValueError):
    """A balance snapshot this version cannot restore (other format or columns)."""


def child_columns(slots: int) -> dict[str, tuple[tuple[int, ...], str, float]]:
    """name -> (per-row shape, dtype, initial value) of the child table."""
    return {
        "kw": ((slots,), "f4", np.nan),  # registered kW per open interval
        "iv": ((slots,), "i8", -1),  # which interval each slot holds
        "prof": ((TOD,), "f4", np.nan),  # time-of-day profile: the missing-reading estimate
        "last": ((), "f4", np.nan),  # last registered kW
        "fast_dev": ((), "f4", 0.0),  # recent departure from the profile, kW (drop < 0)
        "dev_abs": ((), "f4", np.nan),  # typical |departure| from the profile, kW
        "level": ((), "f4", np.nan),  # slow mean kW
        "parent": ((), "i8", -1),  # parent row at the last closed interval
        "prev_parent": ((), "i8", -1),  # parent before the last re-mapping
        "moved_iv": ((), "i8", -1),  # interval of the last re-mapping
    }


def parent_columns(slots: int) -> dict[str, tuple[tuple[int, ...], str, float]]:
    """name -> (per-row shape, dtype, initial value) of the parent table."""
    cols: dict[str, tuple[tuple[int, ...], str, float]] = {
        "kw": ((slots, SUB), "f8", np.nan),
        "iv": ((slots,), "i8", -1),
        "sxx": ((3,), "f8", 0.0),  # EWMA of [1, x, x^2], x = (load / level)^2: loss regression
        "sxy": ((2,), "f8", 0.0),  # EWMA of [y, x y], y = unexplained kW / level
        "level": ((), "f8", np.nan),  # mean load over the warm-up, kW: the loss model's scale
        "scale": ((), "f8", np.nan),  # EWMA |loss-ratio residual|
        "n": ((), "i8", 0),  # intervals balanced
        "ewma": ((), "f8", 0.0),  # recent mean of the standardised residual
        "onset": ((), "i8", -1),  # last interval that recent mean was near 0
        "incident": ((), "i8", -1),  # last alarming interval of the open incident, -1 none
        "since": ((), "i8", -1),  # onset of the open incident
    }
    for name, init in tails.init_values().items():
        cols[name] = ((1,), "f8", init)
    return cols


class Table:
    """Rows of one kind of entity: ids, an index, and the columns."""

    def __init__(self, spec: dict[str, tuple[tuple[int, ...], str, float]], capacity: int = 16):
        self.spec = spec
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.cols = {n: np.full((capacity, *s), v, dtype=d) for n, (s, d, v) in spec.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: list[str]) -> np.ndarray:
        """Row of each id, adding the ones not seen yet."""
        out = np.empty(len(ids), dtype=np.int64)
        for j, entity in enumerate(ids):
            r = self.index.get(entity)
            if r is None:
                r = self.index[entity] = len(self.ids)
                self.ids.append(entity)
            out[j] = r
        self._grow(len(self.ids))
        return out

    def _grow(self, n: int) -> None:
        cap = next(iter(self.cols.values())).shape[0]
        if n <= cap:
            return
        new_cap = max(n, 2 * cap)
        for name, (shape, dtype, init) in self.spec.items():
            grown = np.full((new_cap, *shape), init, dtype=dtype)
            grown[:cap] = self.cols[name]
            self.cols[name] = grown

    def dump(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        arrays[f"{prefix}.ids"] = np.array(self.ids, dtype=np.str_)
        for name, arr in self.cols.items():
            arrays[f"{prefix}.{name}"] = arr[: len(self.ids)]

    def load(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        ids = [str(x) for x in arrays[f"{prefix}.ids"].tolist()]
        self.ids, self.index = ids, {e: i for i, e in enumerate(ids)}
        self._grow(len(ids))
        for name, (shape, dtype, _) in self.spec.items():
            arr = arrays.get(f"{prefix}.{name}")
            if arr is None or arr.dtype != np.dtype(dtype) or arr.shape != (len(ids), *shape):
                raise BalanceSnapshotError(f"balance column {prefix}.{name} does not match")
            self.cols[name][: len(ids)] = arr


def dumps(meta: dict[str, object], children: Table, parents: Table) -> bytes:
    """Both tables and ``meta`` (JSON) as the bytes of one ``.npz``."""
    arrays: dict[str, np.ndarray] = {}
    children.dump("c", arrays)
    parents.dump("p", arrays)
    body = json.dumps({"format": FORMAT, **meta}).encode()
    arrays["meta.json"] = np.frombuffer(body, dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def loads(blob: bytes) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The metadata and arrays of ``dumps`` bytes; ``fill`` puts the arrays into tables."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop("meta.json").tobytes().decode())
    except Exception as exc:  # noqa: BLE001 - zip, npy or JSON errors of a foreign payload
        raise BalanceSnapshotError(f"not a balance snapshot: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise BalanceSnapshotError(f"balance snapshot format {meta.get('format')!r}, want {FORMAT}")
    return meta, arrays


def fill(arrays: dict[str, np.ndarray], children: Table, parents: Table) -> None:
    """Fill both (empty) tables from the arrays of ``loads``."""
    children.load("c", arrays)
    parents.load("p", arrays)
