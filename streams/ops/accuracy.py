"""Live forecast error: match each forecast with the reading that arrives at its target time.

A forecast issued at ``t`` for horizon ``h`` is kept until a reading of the same entity arrives
with timestamp exactly ``t + h`` (regular meters and SCADA scans land on it); then its absolute
percentage error ``|actual - p50| / |actual|`` is reported under that horizon. A forecast whose
entity reported past its target without a reading at that instant (a gap, jitter) is dropped,
and so is one whose target is more than ``expire_after_s`` behind the newest reading seen, so
silent entities do not pin memory. Readings with value 0 have no percentage error and are skipped.

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

import numpy as np

_TS_BITS = 42  # epoch milliseconds < 2**42 until the year 2109
_TS_MASK = (1 << _TS_BITS) - 1
MAX_ENTITIES_LIMIT = 1 << (63 - _TS_BITS)
_NEVER = np.iinfo(np.int64).min
_EXPIRE_EVERY = 8  # batches between sweeps for passed targets (each sweep is O(pending))


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
        self._key = np.empty(0, dtype=np.int64)  # sorted: entity code << 42 | target ms
        self._horizon = np.empty(0, dtype=np.int64)
        self._p50 = np.empty(0, dtype=np.float64)
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
    ) -> dict[int, np.ndarray]:
        """Add a batch's forecasts, match its accepted readings; APEs by horizon (seconds).

        ``entity``, ``ts_ms``, ``value`` and ``accepted`` index the batch's readings (``entity``
        should already tell kinds apart); ``forecast_rows`` maps each forecast to its reading.
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
        self._add(codes, forecast_rows, horizon_s, target_ms, p50)
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
        p50: np.ndarray,
    ) -> None:
        if rows.size == 0:
            return
        fc_code = codes[rows]
        target = np.asarray(target_ms, dtype=np.int64)
        p50 = np.asarray(p50, dtype=np.float64)
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

    def _match(
        self, codes: np.ndarray, ts: np.ndarray, value: np.ndarray, ok: np.ndarray
    ) -> dict[int, np.ndarray]:
        if self._key.size == 0 or not ok.any():
            return {}
        key = (codes[ok] << _TS_BITS) | ts[ok]
        actual = value[ok]
        lo = np.searchsorted(self._key, key, side="left")
        hi = np.searchsorted(self._key, key, side="right")
        n = hi - lo
        hit = n > 0
        if not hit.any():
            return {}
        lo, n, actual = lo[hit], n[hit], actual[hit]
        # every pending forecast in [lo, lo + n) matches its reading (one per horizon)
        starts = np.repeat(lo - np.cumsum(n) + n, n)
        idx = starts + np.arange(int(n.sum()))
        actual = np.repeat(actual, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            ape = np.abs(actual - self._p50[idx]) / np.abs(actual)
        horizon = self._horizon[idx]
        valid = np.isfinite(ape)
        out = {int(h): ape[valid & (horizon == h)] for h in np.unique(horizon[valid])}
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
        last_seen = np.asarray(snap["last_seen"], dtype=np.int64)
        if not key.shape == horizon.shape == p50.shape or key.ndim != 1:
            raise ValueError("forecast columns differ in shape")
        known = len(entities)
        if last_seen.size < known or (key.size and int(key.max() >> _TS_BITS) >= known):
            raise ValueError("forecasts refer to entities the tracker does not know")
        acc._codes = {e: i for i, e in enumerate(entities)}
        acc._key, acc._horizon, acc._p50, acc._last_seen = key, horizon, p50, last_seen
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
