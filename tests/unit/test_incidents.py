"""Incident semantics end to end: the score stream and the event stream say the same thing.

Over a simulated fleet with injected anomalies, every reading shown at or above the emit
threshold is a published event and every event is such a reading; a high reading right after
another is only a step up in severity (one incident, one high-scoring moment per severity step).
"""

from __future__ import annotations

import numpy as np

from models import fusion
from models.params import ProcessorParams
from models.state import NO_TS
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


def test_the_echo_of_an_incident_is_shown_discounted() -> None:
    """After an event, the readings of the open incident that are no news (the change still
    echoing in averages and sums) are shown at ``incident_discount`` of their score, below the
    threshold or above it; a step up in severity is news and keeps its score."""
    p = ProcessorParams()
    c = _one_entity()
    s, warm = np.array([0]), np.array([True])
    step = 900_000
    shown = []
    for i, score in enumerate([0.2, 0.6, 0.45, 0.55, 0.95, 0.4]):
        out, _, news = fusion.incidents(c, s, np.array([i * step]), np.array([score]), warm, p)
        shown.append((round(float(out[0]), 3), bool(news[0])))
    d = p.incident_discount
    assert shown == [
        (0.2, False),  # no incident yet
        (0.6, True),  # opens one (info)
        (round(0.45 * d, 3), False),  # echo below the threshold
        (round(0.55 * d, 3), False),  # echo at the same severity
        (0.95, True),  # a step up to critical is news
        (round(0.4 * d, 3), False),
    ]
    late = fusion.incidents(c, s, np.array([10**9]), np.array([0.3]), warm, p)[0]
    assert late[0] == 0.3  # after the cooldown, scores are shown as they are


def test_between_incidents_only_a_new_high_is_shown_in_full() -> None:
    """A run of similar sub-threshold scores shows as one moment; a clearly higher one shows,
    and crossing the threshold is an event whatever came before."""
    p = ProcessorParams()
    c = _one_entity()
    s, warm, d = np.array([0]), np.array([True]), p.incident_discount
    out = []
    for i, score in enumerate([0.30, 0.32, 0.40, 0.41, 0.52]):
        shown, _, news = fusion.incidents(c, s, np.array([i * 900_000]), np.array([score]), warm, p)
        out.append((round(float(shown[0]), 3), bool(news[0])))
    assert out == [
        (0.30, False),
        (round(0.32 * d, 3), False),  # within news_margin of the high: its echo
        (0.40, False),  # a new high by more than the margin
        (round(0.41 * d, 3), False),
        (0.52, True),  # the threshold crossed: an event, shown in full
    ]


def _one_entity() -> dict[str, np.ndarray]:
    """The incident columns of one entity that has seen nothing yet."""
    return {
        "last_event_ts": np.array([NO_TS]),
        "last_event_rank": np.array([-1]),
        "peak_score": np.array([0.0]),
        "peak_ts": np.array([NO_TS]),
    }
