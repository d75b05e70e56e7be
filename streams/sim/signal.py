"""What the simulated signal looks like: the daily load shape and the injected anomalies.

Pure numpy over all entities of a group at once, with the random generator passed in, so the
simulator decides which seeded stream each draw comes from (and so stays byte-identical).
"""

from __future__ import annotations

import numpy as np
from numpy.random import Generator

ANOMALY_KINDS = ("spike", "drop_to_zero", "stuck", "drift", "voltage_sag", "step_change")
_DUR_LO = np.array([1, 1, 4, 8, 1, 8])  # duration in steps of each kind, inclusive bounds
_DUR_HI = np.array([1, 4, 16, 32, 4, 32])
_SPIKE, _DROP, _STUCK, _DRIFT, _SAG, _STEP = range(6)
_COOLDOWN_STEPS = 4  # clean steps between two anomalies of one entity, so labels stay distinct


def _bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian peak on the 24-hour circle, so a peak near midnight wraps round."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def load_shape(hour: np.ndarray, weekend: bool, commercial: np.ndarray) -> np.ndarray:
    """Daily load (peak ~1): residential morning/evening peaks blended with a commercial day.

    >>> [round(float(x), 2) for x in load_shape(np.array([4.0, 19.0]), False, np.zeros(2))]
    [0.26, 1.01]
    """
    res = (
        0.25
        + 0.45 * _bump(hour, 9.0 if weekend else 7.5, 1.3)
        + 0.75 * _bump(hour, 19.0, 2.0)
        + (0.2 if weekend else 0.05) * _bump(hour, 13.0, 3.0)
    )
    plateau = 1.0 / (1.0 + np.exp(-2.0 * (hour - 7.5))) / (1.0 + np.exp(-2.0 * (18.5 - hour)))
    com = 0.2 + (0.25 if weekend else 0.8) * plateau
    return res + commercial * (com - res)


class Anomalies:
    """Anomaly state of one group of entities; at most one anomaly per entity at a time."""

    def __init__(self, n: int, channels: int) -> None:
        self.kind = np.full(n, -1, dtype=np.int8)
        self.pos = np.zeros(n, dtype=np.int32)
        self.dur = np.zeros(n, dtype=np.int32)
        self.mag = np.zeros(n)
        self.cool = np.zeros(n, dtype=np.int32)
        self.frozen = np.zeros((n, channels))

    def advance(self, rng: Generator, p_start: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Move running anomalies one step on and start new ones on free entities."""
        u = rng.random(self.kind.shape[0])
        active = self.kind >= 0
        self.cool[~active & (self.cool > 0)] -= 1
        self.pos[active] += 1
        ended = active & (self.pos >= self.dur)
        self.kind[ended] = -1
        self.cool[ended] = _COOLDOWN_STEPS
        new = np.flatnonzero((self.kind < 0) & (self.cool == 0) & (u < p_start))
        kinds = rng.integers(0, len(ANOMALY_KINDS), new.shape[0])
        dur = rng.integers(_DUR_LO[kinds], _DUR_HI[kinds] + 1)
        up = rng.random(new.shape[0]) < 0.5
        m = rng.random(new.shape[0])
        mag = np.select(
            [kinds == _SPIKE, kinds == _DRIFT, kinds == _SAG, kinds == _STEP],
            [
                3.0 + 3.0 * m,
                np.where(up, 1.0, -1.0) * (0.3 + 0.5 * m),
                0.10 + 0.10 * m,
                np.where(up, 1.4 + 0.6 * m, 0.3 + 0.3 * m),
            ],
            0.0,
        )
        self.kind[new], self.pos[new], self.dur[new], self.mag[new] = kinds, 0, dur, mag
        return new, kinds, dur

    def factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(active entity indices, factor on P and Q, factor on voltage) for this step."""
        act = np.flatnonzero(self.kind >= 0)
        k, mag = self.kind[act], self.mag[act]
        ramp = 1.0 + mag * (self.pos[act] + 1) / self.dur[act]
        power = np.select(
            [k == _SPIKE, k == _DROP, k == _DRIFT, k == _STEP], [mag, 0.0, ramp, mag], 1.0
        )
        return act, power, np.where(k == _SAG, 1.0 - mag, 1.0)

    def freeze(self, cols: np.ndarray) -> None:
        """Stuck entities repeat, exactly, the rounded reading of their first anomalous step."""
        stuck = self.kind == _STUCK
        first = np.flatnonzero(stuck & (self.pos == 0))
        self.frozen[first] = cols[first]
        later = np.flatnonzero(stuck & (self.pos > 0))
        cols[later] = self.frozen[later]
