"""Incident semantics end to end: the score stream and the event stream say the same thing.

Over a simulated fleet with injected anomalies, every reading shown at or above the emit
threshold is a published event and every event is such a reading; a high reading right after
another is only a step up in severity (one incident, one high-scoring moment per severity step).
"""

from __future__ import annotations

import numpy as np

from models.params import ProcessorParams
from streams.sim.generator import SimConfig
from streams.tools.backtest import backtest_values
from tests.unit.builders import simulated_records

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def test_every_high_score_is_an_event_and_every_event_a_high_score() -> None:
    params = ProcessorParams()
    values, contracts = simulated_records(SimConfig(meters=30, assets=6, seed=21), START_MS, 8 * 24)
    event_rows: list[int] = []
    entity_of: dict[int, str] = {}

    def on_batch(batch, result) -> None:  # noqa: ANN001
        for ev in result.anomalies:
            hit = np.flatnonzero((batch.entity == ev.entity_id) & (batch.ts_ms == ev.ts_ms))
            event_rows.extend(int(batch.src_index[j]) for j in hit)
        for j, e in zip(batch.src_index.tolist(), batch.entity.tolist(), strict=True):
            entity_of[j] = f"{e}"

    out = backtest_values(values, contracts, params, 2_000, on_batch)
    high = set(np.flatnonzero(np.nan_to_num(out.score) >= params.emit_threshold).tolist())
    assert len(event_rows) > 20, "the stream must raise events"
    assert set(event_rows) == high
    # within an entity, a high reading right after another is only a step up in severity
    by_entity: dict[str, list[int]] = {}
    for row in sorted(entity_of):
        by_entity.setdefault(entity_of[row], []).append(row)
    for rows in by_entity.values():
        shown = np.nan_to_num(out.score[rows]) >= params.emit_threshold
        pairs = np.flatnonzero(shown[1:] & shown[:-1])
        sev = out.severity[rows]
        assert np.all(sev[pairs + 1] > sev[pairs]), rows[0]
        # so an incident is high for at most three readings in a row: info, warning, critical
        assert not np.any(shown[2:] & shown[1:-1] & shown[:-2] & np.r_[shown[3:], False])
