"""Per-entity state as numpy columns: one row per entity, grown by doubling.

Every per-entity quantity the core keeps (ring windows, seasonal profile, EWMA scales, detector
memories) is a column here, so a batch updates thousands of entities with a handful of fancy-index
operations and a snapshot is a dict of arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models import tails
from models.params import ProcessorParams

NO_TS = np.iinfo(np.int64).min
WEEK_BUCKETS = 7 * 24  # hours of the week of the weekly profile

# name -> (dtype, per-entity shape as a function of params, initial value)
_SCALARS: dict[str, tuple[type, float]] = {
    "count": (np.int64, 0),  # readings learned
    "last_ts": (np.int64, NO_TS),
    "last_value": (np.float64, np.nan),
    "interval_ms": (np.float64, np.nan),  # EWMA of the sampling interval
    "level": (np.float64, np.nan),  # EWMA of the value, the fallback baseline
    "deviation": (np.float64, 0.0),  # EWMA of value minus seasonal profile (day type's shape)
    "day_off": (np.float64, 0.0),  # the day-type offset in that shape at the last reading
    "scale": (np.float64, np.nan),  # EWMA of |one-step residual|
    "seasonal_scale": (np.float64, np.nan),  # EWMA of |value - profile|
    "seasonal_n": (np.int64, 0),  # observations behind seasonal_scale
    "lscale": (np.float64, np.nan),  # EWMA of |relative one-step residual| (models.relative)
    "lsscale": (np.float64, np.nan),  # EWMA of |relative departure from the profile|
    "cusum_pos": (np.float64, 0.0),
    "cusum_neg": (np.float64, 0.0),
    "run": (np.int64, 0),  # identical consecutive values so far
    "repeat_rate": (np.float64, 0.0),  # EWMA of "value equals previous value"
    "head": (np.int64, 0),  # next write position in the ring
    "err_scale": (np.float64, np.nan),  # slow EWMA of |one-step residual| (likelihood)
    "err_short": (np.float64, np.nan),  # recent mean of |residual| / err_scale
    "err_mean": (np.float64, np.nan),  # long-run mean and variance of err_short
    "err_var": (np.float64, np.nan),
    "lik_n": (np.int64, 0),
    "lvl_short": (np.float64, np.nan),  # recent mean value or departure from profile (level)
    "lvl_mean": (np.float64, np.nan),  # long-run mean and variance of lvl_short
    "lvl_var": (np.float64, np.nan),
    "lvl_n": (np.int64, 0),
    "lvl_dev": (np.int8, 0),  # 1 once the level detector follows departures from the profile,
    # 2 once it follows departures from the profile and the weekly profile
    "nov_lo": (np.float64, np.nan),  # the range the entity has shown (models.novelty)
    "nov_hi": (np.float64, np.nan),
    "week_start": (np.int64, NO_TS),  # first reading whose departure the weekly profile learned
    "last_event_ts": (np.int64, NO_TS),
    "peak_score": (np.float64, 0.0),
    "peak_ts": (np.int64, NO_TS),
    "last_event_rank": (np.int64, -1),  # severity rank of the last event published
}
CHANNEL_NAMES: tuple[str, ...] = ("reactive", "voltage", "current", "frequency", "temperature")


class EntityState:
    """Columns of per-entity state, addressed by slot; ``slots_for`` maps keys to slots."""

    def __init__(self, params: ProcessorParams, capacity: int = 1024) -> None:
        self.params = params
        self.size = 0
        self.index: dict[str, int] = {}
        self.keys: list[str] = []
        self.kinds: list[str] = []
        self.cols: dict[str, np.ndarray] = {}
        self._allocate(max(capacity, 16))

    # -- layout ------------------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[tuple[int, ...], type, float]]:
        p = self.params
        buckets = 86400 // p.profile_bucket_s
        nch = len(CHANNEL_NAMES)
        shapes: dict[str, tuple[tuple[int, ...], type, float]] = {
            name: ((), dtype, init) for name, (dtype, init) in _SCALARS.items()
        }
        shapes["ring_value"] = ((p.window,), np.float64, np.nan)
        shapes["ring_ts"] = ((p.window,), np.int64, NO_TS)
        # float32 halves the largest column; the profile is an average, its precision suffices.
        shapes["profile"] = ((buckets,), np.float32, np.nan)
        shapes["profile_n"] = ((buckets,), np.uint16, 0)
        # EWMA of |one-step residual| per time-of-day bucket: noise that grows with the load
        # (ramps, peaks) does not look like an outlier at those times of day.
        shapes["resid_prof"] = ((buckets,), np.float32, np.nan)
        # EWMA of the departure from the time-of-day profile per hour of the week (Monday 0h = 0):
        # weekday rhythms, learned once the time-of-day profile is trusted.
        shapes["week_dev"] = ((WEEK_BUCKETS,), np.float32, np.nan)
        shapes["week_n"] = ((WEEK_BUCKETS,), np.uint16, 0)
        shapes["chan_mean"] = ((nch,), np.float64, np.nan)
        shapes["chan_scale"] = ((nch,), np.float64, np.nan)
        # peaks-over-threshold model of every calibrated detector statistic (models.tails)
        for name, init in tails.init_values().items():
            shapes[name] = ((tails.N_TAILS,), np.float64, init)
        return shapes

    def _allocate(self, capacity: int) -> None:
        grown: dict[str, np.ndarray] = {}
        for name, (tail, dtype, init) in self._shapes().items():
            arr = np.full((capacity, *tail), init, dtype=dtype)
            old = self.cols.get(name)
            if old is not None:
                arr[: self.size] = old[: self.size]
            grown[name] = arr
        self.cols = grown
        self.capacity = capacity

    # -- slots -------------------------------------------------------------------------------
    def slots_for(self, keys: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        """Slot of every key, allocating fresh (empty) state for keys never seen."""
        get = self.index.get
        found = [get(k, -1) for k in keys]
        slots = np.fromiter(found, dtype=np.int64, count=len(found))
        missing = np.flatnonzero(slots < 0)
        if missing.size:
            for j in missing:
                key = keys[j]
                slot = self.index.get(key)
                if slot is None:
                    slot = self._new_slot(key, kinds[j])
                slots[j] = slot
        return slots

    def _new_slot(self, key: str, kind: str) -> int:
        if self.size == self.capacity:
            self._allocate(self.capacity * 2)
        slot = self.size
        self.size += 1
        self.index[key] = slot
        self.keys.append(key)
        self.kinds.append(kind)
        return slot

    # -- persistence -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """A picklable copy of the state (only the used rows)."""
        return {
            "keys": list(self.keys),
            "kinds": list(self.kinds),
            "cols": {name: arr[: self.size].copy() for name, arr in self.cols.items()},
        }

    @classmethod
    def restore(cls, params: ProcessorParams, snap: dict[str, object]) -> EntityState:
        keys = list(snap["keys"])  # type: ignore[call-overload]
        state = cls(params, capacity=max(16, 2 * len(keys)))
        cols: dict[str, np.ndarray] = snap["cols"]  # type: ignore[assignment]
        expected = state._shapes()
        for name, arr in cols.items():
            if name not in expected or arr.shape[1:] != expected[name][0]:
                raise ValueError(
                    f"snapshot column {name!r} has shape {arr.shape[1:]}, "
                    f"these parameters need {expected.get(name, ('absent',))[0]}"
                )
            state.cols[name][: len(keys)] = arr
        state.keys = keys
        state.kinds = list(snap["kinds"])  # type: ignore[call-overload]
        state.index = {k: i for i, k in enumerate(keys)}
        state.size = len(keys)
        return state

    def nbytes(self) -> int:
        return int(sum(arr.nbytes for arr in self.cols.values()))
