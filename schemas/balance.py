"""Column batch of the energy balance: one row per balanced parent of a closed interval.

Written by ``models.balance``, read by the ClickHouse sink (table ``energy_balance``), so it lives
with the other contracts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class BalanceRows:
    """Balanced parents of one closed interval (the ``energy_balance`` table), energies in kWh."""

    parent_id: np.ndarray  # str
    interval_ms: int
    parent_kwh: np.ndarray
    children_kwh: np.ndarray  # registered plus estimated
    estimated_kwh: np.ndarray  # the part estimated for children without a reading
    expected_loss_kwh: np.ndarray
    residual_kwh: np.ndarray  # parent - children - expected loss
    loss_ratio: np.ndarray  # (parent - children) / parent
    expected_ratio: np.ndarray
    deviation: np.ndarray  # residual ratio in its own scales
    log10p: np.ndarray  # of the parent's CUSUM under its calibrated tail
    children: np.ndarray  # int
    missing: np.ndarray  # int: children estimated
    alarm: np.ndarray  # bool
    suspects: list[str]  # JSON list of the top suspects where alarming, else ""

    def __len__(self) -> int:
        return len(self.parent_id)


# the per-parent measures of a row (float64) and its counts, in the table's column order
MEASURES: tuple[str, ...] = (
    "parent_kwh",
    "children_kwh",
    "estimated_kwh",
    "expected_loss_kwh",
    "residual_kwh",
    "loss_ratio",
    "expected_ratio",
    "deviation",
    "log10p",
)
COUNTS: tuple[str, ...] = ("children", "missing", "alarm")
