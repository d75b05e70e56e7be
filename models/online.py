"""The river detector: HalfSpaceTrees over standardised per-reading features, gated and sampled.

river scores one dict at a time, so it is the one per-event cost in the core. Two bounds keep it
small: the model is global (features are already standardised per entity, so one model serves all
entities), it learns from one reading in ``hst_learn_every``, and it only scores readings that a
vectorised detector already finds suspicious (``hst_gate``); every other reading scores 0.
"""

from __future__ import annotations

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

    def score_and_learn(self, x: np.ndarray, gate: np.ndarray, warm: np.ndarray) -> np.ndarray:
        """Scores of the gated rows (0 elsewhere), then learn the sampled warm rows."""
        out = np.zeros(x.shape[0], dtype=np.float64)
        rows = np.flatnonzero(gate & warm)
        # Until the trees have seen a full window their mass profile is empty: no scores yet.
        if rows.size and self.learned >= self.params.hst_window:
            score_one = self.model.score_one
            for j in rows:
                out[j] = score_one(dict(zip(FEATURES, x[j].tolist(), strict=True)))
            self.scored += int(rows.size)
        every = self.params.hst_learn_every
        n = x.shape[0]
        first = (-self.seen) % every
        sample = np.arange(first, n, every)
        sample = sample[warm[sample] & ~gate[sample]]  # learn what normal looks like
        learn_one = self.model.learn_one
        for j in sample:
            learn_one(dict(zip(FEATURES, x[j].tolist(), strict=True)))
        self.learned += int(sample.size)
        self.seen += n
        return out
