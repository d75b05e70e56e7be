"""Window state survives restarts and rebalances: scores equal those of an uninterrupted run.

Each test produces a known workload, processes it with interruptions (a clean restart, a second
worker joining the group), and compares every forecast and anomaly event on the output topics
with what one uninterrupted core per partition makes of the same records.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from streams.config import Settings
from streams.runtime.runner import StreamRunner, ensure_topics
from tests.integration.conftest import RunnerThread, make_settings, wait_until
from tests.integration.helpers import committed, read_all
from tests.integration.recovery import (
    assert_same_forecasts,
    forecast_map,
    meter_workload,
    produce_tracked,
    reference,
)

# slow (make test-all): restarts and a group rebalance, about 75 s in all
pytestmark = [pytest.mark.integration, pytest.mark.slow]
PARTITIONS = 4


def _settings(bootstrap: str, unique: str, chdb_path: Path, state_dir: Path | None) -> Settings:
    return make_settings(
        bootstrap, unique, chdb_path, partitions=PARTITIONS, clickhouse="none",
        state_dir=state_dir, checkpoint_interval_s=0.5,
    )


def _run_until_idle(settings: Settings) -> StreamRunner:
    runner = StreamRunner(settings)
    runner.run(idle_exit_s=2.0)
    return runner


def _outputs(settings: Settings) -> tuple[dict, list[str]]:
    t = settings.topics
    forecasts = read_all(settings.kafka.bootstrap_servers, t.forecasts, idle_s=2.0)
    events = read_all(settings.kafka.bootstrap_servers, t.anomalies, idle_s=1.0)
    values = [m.value() for m in forecasts]
    fmap = forecast_map(values)
    assert len(fmap) == len(values), "a forecast was published twice"
    return fmap, [orjson.loads(m.value())["event_id"] for m in events]


def _split_run(bootstrap: str, unique: str, chdb_path: Path, state_dir: Path | None):
    settings = _settings(bootstrap, unique, chdb_path, state_dir)
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    records = meter_workload(now_ms)
    cut = len(records) * 3 // 5
    coords = produce_tracked(bootstrap, settings.topics.meter, records[:cut])
    first = _run_until_idle(settings)
    coords += produce_tracked(bootstrap, settings.topics.meter, records[cut:])
    second = _run_until_idle(settings)  # a new runner: the restarted process
    return settings, records, coords, now_ms, first, second


def test_restart_resumes_each_partition_from_its_checkpoint(
    bootstrap: str, unique: str, chdb_path: Path, tmp_path: Path
) -> None:
    settings, records, coords, now_ms, first, second = _split_run(
        bootstrap, unique, chdb_path, tmp_path / "state"
    )
    assert first.states.counters["checkpoints"] >= PARTITIONS
    assert second.states.counters["resumed_from_checkpoint"] == PARTITIONS
    assert second.stats.counters["replayed"] == 0  # a clean stop checkpoints at the commit
    want = reference(settings, records, coords, now_ms)
    got, events = _outputs(settings)
    assert_same_forecasts(got, want.forecasts)
    assert sorted(events) == sorted(want.events) and want.events


def test_without_a_state_dir_a_restart_warms_up_again(
    bootstrap: str, unique: str, chdb_path: Path
) -> None:
    """The comparison above is not vacuous: losing state changes what is published."""
    settings, records, coords, now_ms, _, second = _split_run(bootstrap, unique, chdb_path, None)
    assert second.states.counters["resumed_from_cold"] == PARTITIONS
    want = reference(settings, records, coords, now_ms)
    got, _ = _outputs(settings)
    assert len(got) < len(want.forecasts)  # meters warm up again after the restart
    with pytest.raises(AssertionError):
        assert_same_forecasts(got, want.forecasts)


def test_checkpoint_behind_the_commit_is_caught_up_by_replay(
    bootstrap: str, unique: str, chdb_path: Path, tmp_path: Path
) -> None:
    """A crash after commits but before the next checkpoint: replay closes the gap, silently."""
    state = tmp_path / "state"
    settings = _settings(bootstrap, unique, chdb_path, state)
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    records = meter_workload(now_ms)
    cut = len(records) // 3
    coords = produce_tracked(bootstrap, settings.topics.meter, records[:cut])
    _run_until_idle(settings)
    old = {p: p.read_bytes() for p in (state / settings.kafka.group_id).glob("*.ckpt")}
    coords += produce_tracked(bootstrap, settings.topics.meter, records[cut : 2 * cut])
    _run_until_idle(settings)
    for path, blob in old.items():  # as if the second run died before checkpointing
        path.write_bytes(blob)
    coords += produce_tracked(bootstrap, settings.topics.meter, records[2 * cut :])
    third = _run_until_idle(settings)
    assert third.states.counters["resumed_from_checkpoint"] == PARTITIONS
    assert third.stats.counters["replayed"] > 0
    want = reference(settings, records, coords, now_ms)
    got, events = _outputs(settings)
    assert_same_forecasts(got, want.forecasts)
    assert sorted(events) == sorted(want.events)


def test_partitions_moved_to_a_joining_worker_score_as_without_the_move(
    bootstrap: str, unique: str, chdb_path: Path, tmp_path: Path
) -> None:
    settings = _settings(bootstrap, unique, chdb_path, tmp_path / "state")
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    records = meter_workload(now_ms)
    cut = len(records) // 2
    coords = produce_tracked(bootstrap, settings.topics.meter, records[:cut])

    workers: list[RunnerThread] = []

    def start() -> StreamRunner:
        workers.append(RunnerThread(StreamRunner(settings), name=f"worker-{len(workers)}"))
        return workers[-1].runner

    def check() -> None:
        for w in workers:
            w.check()

    def wait(cond, what: str, timeout_s: float = 60.0) -> None:  # noqa: ANN001
        wait_until(what, cond, timeout_s, check=check)

    ends = [0] * PARTITIONS
    for part, off in coords:
        ends[part] = max(ends[part], off + 1)

    def all_committed() -> bool:
        got = committed(bootstrap, settings.kafka.group_id, settings.topics.meter, PARTITIONS)
        return got == ends

    try:
        a = start()
        wait(all_committed, "worker A to process the first half")
        b = start()
        meter = settings.topics.meter

        def held(r: StreamRunner) -> int:
            return sum(topic == meter for topic, _ in r.assigned)

        wait(lambda: held(b) > 0 and held(a) < PARTITIONS, "the rebalance")
        coords += produce_tracked(bootstrap, settings.topics.meter, records[cut:])
        ends = [0] * PARTITIONS
        for part, off in coords:
            ends[part] = max(ends[part], off + 1)
        wait(all_committed, "both workers to process the second half")
    finally:
        for w in workers:
            w.stop.set()
        for w in workers:  # joined: an error raised while stopping fails the test too
            w.close()
    moved = b.states.counters["resumed_from_checkpoint"]
    assert moved >= 1, b.states.counters
    want = reference(settings, records, coords, now_ms)
    got, events = _outputs(settings)
    assert_same_forecasts(got, want.forecasts)
    assert sorted(events) == sorted(want.events)
