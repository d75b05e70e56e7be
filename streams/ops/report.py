"""What one processed batch did: the record both engines hand to monitors and progress displays.

It lives with the operations side because the monitor, the metrics and the demo read it; the
runtime builds it (``streams.runtime.batch.record_batch``), so the runtime imports ``ops`` and
never the other way round.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from models.processor import ProcessResult
from schemas.batch import ReadingBatch


@dataclass(slots=True)
class BatchReport:
    """What one batch did, for progress displays and metrics."""

    consumed: int
    readings: int
    dead_letters: int
    forecasts: int
    anomalies: int
    duration_s: float
    counters: Counter[str]
    readings_batch: ReadingBatch
    result: ProcessResult
    consumed_by_topic: dict[str, int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)  # output topic -> records
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    stage_s: dict[str, float] = field(default_factory=dict)  # decode/process/deliver/commit
    published_ms: int = 0  # when every output of the batch was acknowledged
    state_events: dict[str, int] = field(default_factory=dict)  # running totals (recovery)
    # forecast errors measured by the partition tasks (None: the monitor measures them itself)
    forecast_apes: dict[int, np.ndarray] | None = None
    forecasts_awaiting: int = 0
    partitions: dict[tuple[str, int], int] = field(default_factory=dict)  # records in the batch
    buffered: dict[tuple[str, int], int] = field(default_factory=dict)  # records left waiting
