"""The metrics the dashboard and alerts read equal, summed over lives, an uninterrupted run's.

A processor resumes from checkpoints twice mid-stream: once cleanly, once from a checkpoint
older than the committed offset, so a batch mixes replayed and live readings (the case that used
to break the forecast-error tracker). Every life has its own registry, as a restarted process
does; Prometheus' ``increase()`` adds the lives up, so the test adds them up too and compares
with one uninterrupted run of another group over the same records.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streams.config import ClickHouseSettings, ProcessingSettings, Settings
from streams.ops.monitor import Monitor
from streams.runtime.runner import StreamRunner, ensure_topics
from tests.integration.conftest import make_settings
from tests.integration.recovery import meter_workload, produce_tracked

# slow (make test-all): three lives with restores from checkpoints, about 25 s
pytestmark = [pytest.mark.integration, pytest.mark.slow]
PARTITIONS = 4

# every series the dashboard and the alert rules read that a batch moves (docker/)
COUNTERS = (
    "gridstream_readings_consumed_total",
    "gridstream_records_produced_total",
    "gridstream_dead_letters_total",
    "gridstream_readings_dropped_total",
    "gridstream_anomalies_total",
    "gridstream_drift_events_total",
)
HISTOGRAM_TOTALS = ("gridstream_forecast_ape_ratio_count", "gridstream_forecast_ape_ratio_sum")


def _life(settings: Settings) -> tuple[StreamRunner, Counter[tuple[str, tuple], float]]:
    runner = StreamRunner(settings)
    registry = CollectorRegistry()
    runner.monitor = Monitor(runner.processor, registry=registry, clickhouse_enabled=False)
    runner.run(idle_exit_s=2.0)
    return runner, _sample(registry)


def _sample(registry: CollectorRegistry) -> Counter[tuple[str, tuple], float]:
    out: Counter[tuple[str, tuple], float] = Counter()
    for family in registry.collect():
        for s in family.samples:
            if s.name in COUNTERS or s.name in HISTOGRAM_TOTALS:
                out[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return out


def test_forecast_error_and_alert_metrics_survive_restores_from_checkpoints(
    bootstrap: str,
    unique: str,
    chdb_path: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = make_settings(bootstrap, unique, chdb_path, partitions=PARTITIONS)
    state = tmp_path / "state"
    settings = base.model_copy(
        update={
            "clickhouse": ClickHouseSettings(backend="none"),
            "processing": ProcessingSettings(state_dir=state, checkpoint_interval_s=0.5),
        }
    )
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    records = meter_workload(now_ms)
    cut = len(records) // 3
    caplog.set_level(logging.WARNING, logger="gridstream")

    lives: Counter[tuple[str, tuple], float] = Counter()
    produce_tracked(bootstrap, settings.topics.meter, records[:cut])
    _, sample = _life(settings)
    lives.update(sample)
    old = {p: p.read_bytes() for p in (state / settings.kafka.group_id).glob("*.ckpt")}
    produce_tracked(bootstrap, settings.topics.meter, records[cut : 2 * cut])
    second, sample = _life(settings)  # resumes cleanly from the checkpoints of the first
    lives.update(sample)
    assert second.states.counters["resumed_from_checkpoint"] == PARTITIONS
    for path, blob in old.items():  # as if the second life died before checkpointing
        path.write_bytes(blob)
    produce_tracked(bootstrap, settings.topics.meter, records[2 * cut :])
    third, sample = _life(settings)  # restores, replays, then mixes replayed and live readings
    lives.update(sample)
    assert third.states.counters["resumed_from_checkpoint"] == PARTITIONS
    assert third.stats.counters["replayed"] > 0

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]

    reference = settings.model_copy(  # another group reads the same records in one life
        update={
            "kafka": settings.kafka.model_copy(update={"group_id": f"{unique}-uninterrupted"}),
            "processing": ProcessingSettings(),
        }
    )
    _, want = _life(reference)
    apes = {k: v for k, v in want.items() if k[0] == "gridstream_forecast_ape_ratio_count"}
    assert sum(apes.values()) > 0 and len(apes) == 2  # both horizons scored
    assert any(k[0] == "gridstream_anomalies_total" and v for k, v in want.items())
    for key in sorted(want.keys() | lives.keys()):
        assert lives[key] == pytest.approx(want[key], rel=1e-9), key
