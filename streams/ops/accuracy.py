"""Live forecast error: match each forecast with the reading that is its actual.

The rule is ``schemas.accuracy``'s, the same as the ClickHouse ``forecast_accuracy`` view's: a
forecast for target time ``T`` is kept until its entity's first reading at or after ``T``
arrives; if that reading is less than ``ACTUAL_TOLERANCE_S`` after ``T`` it is the actual, and the
absolute percentage error ``|actual - p50| / |actual|`` is reported under the forecast's horizon
(an actual of 0 has none). A forecast whose entity's first reading after ``T`` comes later (a
gap) is dropped, and so is one whose target is more than ``expire_after_s`` behind the newest
reading seen, so silent entities do not pin memory. ``track`` also returns p10/p90 with each
match, for the demo's MAE, WAPE and interval coverage.

Memory is bounded: at most ``max_entities`` entities are tracked (the first ones seen: a stable
sample, enough for a fleet-wide MAPE) and at most ``capacity`` forecasts wait at once (new ones
are counted in ``untracked`` while full). Work per batch is numpy over a sorted int64 key array,
O(capacity) at worst; the only per-reading Python is one dict lookup for the entity code.

The waiting forecasts are partition state like the windows that made them: the runner keeps one
tracker per partition task and checkpoints it with the task (``snapshot``/``restore``: plain
arrays), and replayed readings update it without reporting (their errors were reported before the
crash), so the error series after a restore equal those of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from schemas.accuracy import ACTUAL_TOLERANCE_S, percentage_error
from schemas.batch import ReadingBatch, entity_key

if TYPE_CHECKING:
    from models.processor import ProcessResult

_TS_BITS = 42  # epoch milliseconds < 2**42 until the year 2109
_TS_MASK = (1 << _TS_BITS) - 1
MAX_ENTITIES_LIMIT = 1 << (63 - _TS_BITS)
_NEVER = np.iinfo(np.int64).min
_EXPIRE_EVERY = 8  # batches between sweeps for passed targets (each sweep is O(pending))


@dataclass(slots=True)
class Matches:
    """Forecasts that met their actual in one batch: one element per forecast.

    ``entity`` holds entity keys (``schemas.batch.entity_key``) and ``target_ms`` the target
    times: what ``forecast_errors`` rows need (``sinks.rows_errors``)."""

    horizon_s: np.ndarray
    actual: np.ndarray
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    entity: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    target_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.horizon_s.size)

    @classmethod
    def none(cls) -> Matches:
        empty = np.empty(0, dtype=np.float64)
        return cls(np.empty(0, dtype=np.int64), empty, empty, empty, empty)

    @classmethod
    def concat(cls, parts: list[Matches]) -> Matches:
        """The matches of several tasks of one batch, as one."""
        if not parts:
            return cls.none()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def apes_by_horizon(self) -> dict[int, np.ndarray]:
        """Absolute percentage errors by horizon (seconds); actuals of 0 have none."""
        ape = percentage_error(self.actual, self.p50)
        valid = np.isfinite(ape)
        h_s = self.horizon_s
        return {int(h): ape[valid & (h_s == h)] for h in np.unique(h_s[valid])}


_FIELDS = tuple(f.name for f in fields(Matches))


class ForecastAccuracy:
    """Bounded join of forecasts with later readings; ``update`` returns APEs per horizon."""

    def __init__(
        self,
        capacity: int = 250_000,
        max_entities: int = 50_000,
        expire_after_s: int = 86_400,
    ) -> None:
        if not 0 < max_entities <= MAX_ENTITIES_LIMIT:
            raise ValueError(f"max_entities must be in 1..{MAX_ENTITIES_LIMIT}, got {max_entities}")
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.max_entities = max_entities
        self.expire_after_ms = expire_after_s * 1000
        self.untracked = 0  # forecasts not kept because the tracker was full
        self._codes: dict[str, int] = {}
        self._names: list[str] = []  # entity key of each code
        self._key = np.empty(0, dtype=np.int64)  # sorted: entity code << 42 | target ms
        self._horizon = np.empty(0, dtype=np.int64)
        self._p50 = np.empty(0, dtype=np.float64)
        self._p10 = np.empty(0, dtype=np.float64)
        self._p90 = np.empty(0, dtype=np.float64)
        self.tolerance_ms = ACTUAL_TOLERANCE_S * 1000
        self._last_seen = np.full(0, _NEVER, dtype=np.int64)  # newest reading ts per code
        self._newest_ms = _NEVER
        self._updates = 0

    @property
    def pending(self) -> int:
        """Forecasts waiting for their target reading."""
        return int(self._key.size)

    @property
    def entities(self) -> int:
        return len(self._codes)

    def _encode(self, entities: list[str]) -> np.ndarray:
        codes = self._codes
        room = self.max_entities - len(codes)
        out = []
        for e in entities:
            c = codes.get(e)
            if c is None:
                if room <= 0:
                    c = -1
                else:
                    c = codes[e] = len(codes)
                    self._names.append(e)
                    room -= 1
            out.append(c)
        if len(codes) > self._last_seen.size:
            grown = np.full(min(self.max_entities, 2 * len(codes) + 1024), _NEVER, dtype=np.int64)
            grown[: self._last_seen.size] = self._last_seen
            self._last_seen = grown
        return np.array(out, dtype=np.int64)

    def update(
        self,
        entity: np.ndarray,
        ts_ms: np.ndarray,
        value: np.ndarray,
        accepted: np.ndarray,
        forecast_rows: np.ndarray,
        horizon_s: np.ndarray,
        target_ms: np.ndarray,
        p50: np.ndarray,
        p10: np.ndarray | None = None,
        p90: np.ndarray | None = None,
    ) -> dict[int, np.ndarray]:
        """Add a batch's forecasts, match its accepted readings; APEs by horizon (seconds)."""
        return self.match(
            entity, ts_ms, value, accepted, forecast_rows, horizon_s, target_ms, p50, p10, p90
        ).apes_by_horizon()

    def track(self, batch: ReadingBatch, result: ProcessResult) -> Matches:
        """``match`` for a processed batch: its forecasts and its accepted readings."""
        fc = result.forecasts
        return self.match(
            entity_key(batch.kind, batch.entity),  # type: ignore[arg-type]
            batch.ts_ms,
            batch.value,
            np.isfinite(result.expected),
            result.forecast_rows,
            fc.horizon_s,
            fc.target_ms,
            fc.p50,
            fc.p10,
            fc.p90,
        )

    def match(
        self,
        entity: np.ndarray,
        ts_ms: np.ndarray,
        value: np.ndarray,
        accepted: np.ndarray,
        forecast_rows: np.ndarray,
        horizon_s: np.ndarray,
        target_ms: np.ndarray,
        p50: np.ndarray,
        p10: np.ndarray | None = None,
        p90: np.ndarray | None = None,
    ) -> Matches:
        """Add a batch's forecasts, then match its accepted readings against every one waiting.

        ``entity``, ``ts_ms``, ``value`` and ``accepted`` index the batch's readings (``entity``
        should already tell kinds apart: ``schemas.batch.entity_key``); ``forecast_rows`` maps
        each forecast to its reading. Without ``p10``/``p90`` the matches carry NaN for them.
        """
        n = len(entity)
        if not len(ts_ms) == len(value) == len(accepted) == n:
            raise ValueError(
                f"readings columns differ in length: entity {n}, ts {len(ts_ms)}, "
                f"value {len(value)}, accepted {len(accepted)}"
            )
        if len(forecast_rows) and int(np.max(forecast_rows)) >= n:
            raise ValueError(f"forecast rows point past the {n} readings of the batch")
        codes = self._encode(entity.tolist()) if len(entity) else np.empty(0, dtype=np.int64)
        ts = np.asarray(ts_ms, dtype=np.int64)
        ok = np.asarray(accepted, dtype=bool) & (codes >= 0) & (ts >= 0) & (ts <= _TS_MASK)
        nan = np.full(len(p50), np.nan)
        self._add(
            codes, forecast_rows, horizon_s, target_ms,
            (p50, nan if p10 is None else p10, nan if p90 is None else p90),
        )
        out = self._match(codes, ts, np.asarray(value, dtype=np.float64), ok)
        if ok.any():
            np.maximum.at(self._last_seen, codes[ok], ts[ok])
            self._newest_ms = max(self._newest_ms, int(ts[ok].max()))
        self._updates += 1
        if self._updates % _EXPIRE_EVERY == 0 or self._key.size >= self.capacity:
            self._expire()
        return out

    def _add(
        self,
        codes: np.ndarray,
        rows: np.ndarray,
        horizon_s: np.ndarray,
        target_ms: np.ndarray,
        quantiles: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        if rows.size == 0:
            return
        fc_code = codes[rows]
        target = np.asarray(target_ms, dtype=np.int64)
        p50, p10, p90 = (np.asarray(q, dtype=np.float64) for q in quantiles)
        keep = (fc_code >= 0) & (target >= 0) & (target <= _TS_MASK) & np.isfinite(p50)
        room = self.capacity - self._key.size
        n_keep = int(keep.sum())
        if n_keep > room:
            self.untracked += n_keep - max(room, 0)
            keep &= np.cumsum(keep) <= max(room, 0)
        if not keep.any():
            return
        key = (fc_code[keep] << _TS_BITS) | target[keep]
        order = np.argsort(key, kind="stable")
        key = key[order]
        pos = np.searchsorted(self._key, key, side="right")
        self._key = np.insert(self._key, pos, key)
        self._horizon = np.insert(self._horizon, pos, np.asarray(horizon_s)[keep][order])
        self._p50 = np.insert(self._p50, pos, p50[keep][order])
        self._p10 = np.insert(self._p10, pos, p10[keep][order])
        self._p90 = np.insert(self._p90, pos, p90[keep][order])

    def _match(
        self, codes: np.ndarray, ts: np.ndarray, value: np.ndarray, ok: np.ndarray
    ) -> Matches:
        """Each accepted reading takes the waiting forecasts whose target lies in
        ``(previous reading of the entity, its ts]`` and less than the tolerance before it."""
        if self._key.size == 0 or not ok.any():
            return Matches.none()
        key = (codes[ok] << _TS_BITS) | ts[ok]
        order = np.argsort(key, kind="stable")
        key, actual = key[order], value[ok][order]
        base = (key >> _TS_BITS) << _TS_BITS
        after_previous = np.concatenate(([0], key[:-1] + 1))  # same entity: its previous reading
        lower = np.maximum.reduce([key - self.tolerance_ms + 1, base, after_previous])
        lo = np.searchsorted(self._key, lower, side="left")
        hi = np.searchsorted(self._key, key, side="right")
        n = np.maximum(hi - lo, 0)
        hit = n > 0
        if not hit.any():
            return Matches.none()
        lo, n, actual = lo[hit], n[hit], actual[hit]
        # every pending forecast in [lo, lo + n) matches its reading (one per horizon)
        starts = np.repeat(lo - np.cumsum(n) + n, n)
        idx = starts + np.arange(int(n.sum()))
        matched = self._key[idx]
        names = self._names
        out = Matches(
            self._horizon[idx], np.repeat(actual, n), self._p10[idx], self._p50[idx],
            self._p90[idx],
            np.array([names[c] for c in (matched >> _TS_BITS).tolist()], dtype=object),
            matched & _TS_MASK,
        )
        keep = np.ones(self._key.size, dtype=bool)
        keep[idx] = False
        self._compress(keep)
        return out

    # -- state ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """Plain arrays (no objects): the waiting forecasts and what the sweeps need."""
        return {
            "entities": np.array(list(self._codes), dtype=np.str_),
            "key": self._key.copy(),
            "horizon": self._horizon.copy(),
            "p50": self._p50.copy(),
            "p10": self._p10.copy(),
            "p90": self._p90.copy(),
            "last_seen": self._last_seen.copy(),
            "counters": np.array([self._newest_ms, self._updates, self.untracked], dtype=np.int64),
            "limits": np.array(
                [self.capacity, self.max_entities, self.expire_after_ms], dtype=np.int64
            ),
        }

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> ForecastAccuracy:
        """The tracker ``snapshot`` describes; ValueError if the arrays do not fit together."""
        capacity, max_entities, expire_after_ms = (int(x) for x in snap["limits"])
        acc = cls(capacity, max_entities, expire_after_ms // 1000)
        entities = [str(e) for e in snap["entities"].tolist()]
        key = np.asarray(snap["key"], dtype=np.int64)
        horizon = np.asarray(snap["horizon"], dtype=np.int64)
        p50 = np.asarray(snap["p50"], dtype=np.float64)
        # checkpoints written before p10/p90 were kept: their coverage is unknown
        p10 = np.asarray(snap.get("p10", np.full(p50.shape, np.nan)), dtype=np.float64)
        p90 = np.asarray(snap.get("p90", np.full(p50.shape, np.nan)), dtype=np.float64)
        last_seen = np.asarray(snap["last_seen"], dtype=np.int64)
        if not key.shape == horizon.shape == p50.shape == p10.shape == p90.shape or key.ndim != 1:
            raise ValueError("forecast columns differ in shape")
        known = len(entities)
        if last_seen.size < known or (key.size and int(key.max() >> _TS_BITS) >= known):
            raise ValueError("forecasts refer to entities the tracker does not know")
        acc._codes = {e: i for i, e in enumerate(entities)}
        acc._names = entities
        acc._key, acc._horizon, acc._p50, acc._last_seen = key, horizon, p50, last_seen
        acc._p10, acc._p90 = p10, p90
        acc._newest_ms, acc._updates, acc.untracked = (int(x) for x in snap["counters"])
        return acc

    def _expire(self) -> None:
        """Drop forecasts no reading can match any more: readings of an entity only move on."""
        if self._key.size == 0:
            return
        target = self._key & _TS_MASK
        stale = target < self._last_seen[self._key >> _TS_BITS]
        if self._newest_ms != _NEVER:
            stale |= target < self._newest_ms - self.expire_after_ms
        if stale.any():
            self._compress(~stale)

    def _compress(self, keep: np.ndarray) -> None:
        self._key = self._key[keep]
        self._horizon = self._horizon[keep]
        self._p50 = self._p50[keep]
        self._p10 = self._p10[keep]
        self._p90 = self._p90[keep]
