"""A backtest with the live topic's partition count computes what the live run published.

The same readings go (a) through ``gridstream backtest``'s core with ``partitions=4`` and (b) to
a 4-partition topic on the embedded broker, keyed by meter id with the producer's default
partitioner, and through ``gridstream run``'s assembled service. Every forecast record and every
anomaly event (score, severity, detectors, explanation) must be equal, record for record.

Both run one core per (topic, partition) (``streams.state.tasks.TaskSet``), so the state that
cores share across entities (the fleet drift detector, the river model when enabled) holds the
same entities in both; the backtest places each meter with ``partition_of``, the producer's rule.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from confluent_kafka import Producer

from schemas.batch import ReadingBatch
from sinks.encode import anomaly_json, encode_forecasts
from streams.config import ClickHouseSettings
from streams.runtime.runner import StreamRunner, ensure_topics
from streams.service import Assembly, build_service
from streams.tools.backtest import _arrival_batches, backtest_values, encode_rows
from tests.integration.conftest import make_settings
from tests.integration.helpers import read_all

PARTITIONS = 4
STEP_MS = 900_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _readings(meters: int = 16, days: int = 3) -> pd.DataFrame:
    """Daily load shapes with noise and a few gross spikes, so events fire on several cores."""
    rng = np.random.default_rng(11)
    steps = days * 96
    rows = []
    for i in range(steps):
        for m in range(meters):
            kw = 2.0 + m * 0.1 + math.sin(2 * math.pi * i / 96) + rng.normal(0, 0.05)
            if i > 150 and (i * 7 + m * 13) % 211 == 0:
                kw *= 6.0
            rows.append({"meter_id": f"meter-{m:03d}", "ts": str(START_MS + i * STEP_MS),
                         "kw": f"{kw:.4f}"})
    return pd.DataFrame(rows)


def _backtest(values: list[bytes], params: object, partitions: int) -> tuple[list, list]:
    forecasts: list[dict] = []

    def on_batch(batch: ReadingBatch, res: object) -> None:
        forecasts.extend(orjson.loads(r.value) for r in encode_forecasts(res.forecasts))  # type: ignore[attr-defined]

    result = backtest_values(values, ["meter"] * len(values), params, 500,  # type: ignore[arg-type]
                             on_batch=on_batch, partitions=partitions)
    return forecasts, [anomaly_json(ev) for ev in result.events]


def _key(doc: dict) -> tuple:
    return (doc["entity_id"], doc["issued_at"], doc["horizon_s"])


def test_backtest_with_the_topics_partitions_equals_the_live_run(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    settings = make_settings(bootstrap, unique, tmp_path, partitions=PARTITIONS)
    settings = settings.model_copy(update={"clickhouse": ClickHouseSettings(backend="none")})
    values, _ = encode_rows(_readings())
    params = settings.processing.params()
    expected_fc, expected_ev = _backtest(values, params, PARTITIONS)
    assert expected_ev, "the workload must fire events, or scores go uncompared"

    # live: the backtest's arrival order, produced with the default partitioner
    (order,) = _arrival_batches(_decoded(values), len(values))
    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in order.tolist():
        key = orjson.loads(values[i])["meter_id"].encode()
        producer.produce(settings.topics.meter, values[i], key)
    assert producer.flush(30) == 0
    now_ms = START_MS + (3 * 96 - 1) * STEP_MS + 1  # the backtest's: the latest reading + 1 ms
    service = build_service(settings, Assembly(clock=lambda: (now_ms + 0.5) / 1000))
    runner = service.engine
    assert isinstance(runner, StreamRunner)
    runner.run(idle_exit_s=4.0)

    live_fc = [orjson.loads(m.value()) for m in read_all(bootstrap, settings.topics.forecasts,
                                                         expect=len(expected_fc))]
    live_ev = [orjson.loads(m.value()) for m in read_all(bootstrap, settings.topics.anomalies,
                                                         expect=len(expected_ev))]
    assert len(live_fc) == len(expected_fc)
    assert sorted(live_fc, key=_key) == sorted(expected_fc, key=_key)
    assert sorted(live_ev, key=lambda d: d["event_id"]) == sorted(
        expected_ev, key=lambda d: d["event_id"]
    )


def _decoded(values: list[bytes]) -> ReadingBatch:
    from schemas.decode import decode_batch
    from schemas.readings import MAX_TS_MS, MIN_TS_MS

    return decode_batch(values, ["meter"] * len(values), now_ms=MAX_TS_MS,
                        max_age_ms=MAX_TS_MS - MIN_TS_MS, max_future_ms=0).readings
