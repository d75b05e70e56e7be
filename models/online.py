"""The river detector: HalfSpaceTrees over standardised per-reading features, gated and sampled.

river scores one dict at a time, so it is the one per-event cost in the core. Two bounds keep it
small: the model is global (features are already standardised per entity, so one model serves all
entities), it learns from one reading in ``hst_learn_every``, and it only scores readings that a
vectorised detector already finds suspicious (``gate_decades``); every other reading scores 0. It is
off by default; ``ProcessorParams.detectors`` with "hst" fuses it.

Which readings it learns is a hash of (entity, ts), not of arrival position, and the processor
feeds it one batch in arrival order, so its output is the same however the stream is cut into
batches (river's "batch == one by one" check).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from river import anomaly

from models.params import ProcessorParams

FEATURES: tuple[str, ...] = ("residual", "seasonal", "cusum", "channel", "run")


class GatedHalfSpaceTrees:
    """A seeded river HalfSpaceTrees with a learning schedule and a scoring gate."""

    def __init__(self, params: ProcessorParams) -> None:
        self.params = params
        self.model = anomaly.HalfSpaceTrees(
            n_trees=params.hst_trees,
            height=params.hst_height,
            window_size=params.hst_window,
            seed=params.seed,
        )
        self.seen = 0
        self.learned = 0
        self.scored = 0

    @staticmethod
    def features(
        z: np.ndarray, zs: np.ndarray, cusum: np.ndarray, zc: np.ndarray, run: np.ndarray
    ) -> np.ndarray:
        """Squash each standardised feature into [0, 1], the range HalfSpaceTrees expects."""
        cols = [
            np.tanh(np.abs(z) / 8.0),
            np.tanh(np.abs(zs) / 8.0),
            np.tanh(cusum / 30.0),
            np.tanh(np.abs(zc) / 8.0),
            np.tanh(run / 10.0),
        ]
        return np.column_stack(cols)

    def learn_schedule(self, keys: Sequence[str], ts_ms: np.ndarray) -> np.ndarray:
        """The readings the model learns: one in ``hst_learn_every`` (``hash_sample``)."""
        return hash_sample(keys, ts_ms, self.params.hst_learn_every)

    def score_and_learn(
        self, x: np.ndarray, gate: np.ndarray, warm: np.ndarray, learn: np.ndarray
    ) -> np.ndarray:
        """One reading after the other, in the order given: score it if gated (0 otherwise), then
        learn it if ``learn`` selects it, it is warm and not gated (learn what normal looks like).
        """
        out = np.zeros(x.shape[0], dtype=np.float64)
        score_rows = gate & warm
        learn_rows = learn & warm & ~gate
        score_one, learn_one = self.model.score_one, self.model.learn_one
        window = self.params.hst_window
        for j in np.flatnonzero(score_rows | learn_rows):
            xj = dict(zip(FEATURES, x[j].tolist(), strict=True))
            # Until the trees have seen a full window their mass profile is empty: no scores yet.
            if score_rows[j] and self.learned >= window:
                out[j] = score_one(xj)
                self.scored += 1
            elif learn_rows[j]:
                learn_one(xj)
                self.learned += 1
        self.seen += x.shape[0]
        return out


def hash_sample(keys: Sequence[str], ts_ms: np.ndarray, every: int) -> np.ndarray:
    """True for one reading in ``every``, chosen by a hash of (entity key, ts): the same readings
    whatever the batch boundaries, arrival order, restarts or partition assignment, and not
    aligned with the time of day as a modulo of ts would be.
    """
    if every <= 1:
        return np.ones(len(keys), dtype=bool)
    crc = {k: zlib.crc32(k.encode()) for k in set(keys)}
    h = np.fromiter((crc[k] for k in keys), dtype=np.uint64, count=len(keys))
    x = (h * np.uint64(0x9E3779B97F4A7C15)) ^ np.asarray(ts_ms, dtype=np.int64).view(np.uint64)
    x ^= x >> np.uint64(30)  # splitmix64 finaliser: every bit of key and ts mixes in
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x % np.uint64(every) == 0
