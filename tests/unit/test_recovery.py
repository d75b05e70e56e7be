"""Partition tasks, checkpoints and the choice of state on assignment (pure, no Kafka)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.params import ProcessorParams
from models.processor import GridProcessor
from schemas.batch import ReadingBatch
from streams.runtime.failpoints import FailpointError, Failpoints, parse
from streams.state.checkpoints import CheckpointError, CheckpointStore
from streams.state.recovery import BEGINNING, PartitionStates
from streams.state.tasks import TaskSet
from tests.unit.builders import NOW_MS, daily_load, to_batch

A, B = ("meter-topic", 0), ("meter-topic", 1)
ENTITIES = (("m1", "meter"), ("m2", "meter"), ("m3", "meter"), ("m4", "meter"))


@pytest.fixture(scope="module")
def stream() -> ReadingBatch:
    cols = daily_load(ENTITIES, days=3.0)
    # a spike on m3, so events as well as forecasts are compared
    m3 = np.flatnonzero(cols["entity"] == "m3")
    cols["value"][m3[200]] *= 6.0
    return to_batch(cols)


def partition_of(b: ReadingBatch) -> np.ndarray:
    """m1, m3 on partition 0; m2, m4 on partition 1 (as a key hash would spread them)."""
    return np.isin(b.entity, ["m2", "m4"]).astype(np.int64)


def chunks(b: ReadingBatch, size: int) -> list[ReadingBatch]:
    return [b.take(np.arange(i, min(i + size, len(b)))) for i in range(0, len(b), size)]


def test_tasks_score_each_partition_on_its_own_core_and_merge_by_row(
    stream: ReadingBatch,
) -> None:
    tasks = TaskSet()
    part = partition_of(stream)
    out = tasks.process(stream, part, [A, B], NOW_MS)
    merged = out.result
    assert out.replayed == 0 and out.readings is stream and set(tasks.tasks) == {A, B}
    for p, tid in enumerate([A, B]):
        rows = np.flatnonzero(part == p)
        alone = GridProcessor().process_batch(stream.take(rows), NOW_MS)
        np.testing.assert_array_equal(merged.score[rows], alone.score)
        np.testing.assert_array_equal(merged.severity[rows], alone.severity)
        mine = np.isin(merged.forecast_rows, rows)
        np.testing.assert_array_equal(merged.forecasts.p50[mine], alone.forecasts.p50)
        np.testing.assert_array_equal(merged.forecast_rows[mine], rows[alone.forecast_rows])
        assert tasks.tasks[tid].processor.entities == 2
    assert len(merged.forecasts) == len(merged.forecast_rows)
    assert any(ev.entity_id == "m3" for ev in merged.anomalies)
    assert tasks.entities == 4


def test_replayed_rows_rebuild_state_and_publish_nothing(stream: ReadingBatch) -> None:
    part = partition_of(stream)
    cut = len(stream) // 2
    whole = TaskSet()
    whole.process(stream.take(np.arange(cut)), part[:cut], [A, B], NOW_MS)
    expected = whole.process(stream.take(np.arange(cut, len(stream))), part[cut:], [A, B], 0)

    replaying = TaskSet()
    replay = np.arange(len(stream)) < cut
    out = replaying.process(stream, part, [A, B], 0, replay)
    got = out.result
    assert out.replayed == cut
    # the result describes the live rows only, like the readings it comes with
    assert len(out.readings) == len(got.score) == len(stream) - cut
    np.testing.assert_array_equal(out.readings.src_index, stream.src_index[cut:])
    np.testing.assert_array_equal(got.score, expected.result.score)
    np.testing.assert_array_equal(got.forecast_rows, expected.result.forecast_rows)
    assert [ev.event_id for ev in got.anomalies] == [
        ev.event_id for ev in expected.result.anomalies
    ]
    # replayed forecasts waited for their actuals as they would have without the replay
    assert expected.apes and sorted(out.apes) == sorted(expected.apes)
    for h, ape in expected.apes.items():
        np.testing.assert_array_equal(out.apes[h], ape)
    assert replaying.forecasts_awaiting == whole.forecasts_awaiting


def test_checkpoint_round_trip_and_resume_scores_identically(
    tmp_path: Path, stream: ReadingBatch
) -> None:
    store = CheckpointStore(tmp_path, "g")
    pieces = chunks(stream, 97)
    straight = GridProcessor()
    reference = [straight.process_batch(b, NOW_MS) for b in pieces]

    proc = GridProcessor()
    for b in pieces[:10]:
        proc.process_batch(b, NOW_MS)
    store.save(A, 970, proc)
    ck = store.load(A)
    assert ck is not None and ck.position == 970 and ck.nbytes > 0
    after = [ck.processor.process_batch(b, NOW_MS) for b in pieces[10:]]
    for got, want in zip(after, reference[10:], strict=True):
        np.testing.assert_array_equal(got.score, want.score)
        np.testing.assert_array_equal(got.forecasts.p90, want.forecasts.p90)
    assert store.load(B) is None


def test_a_checkpoint_carries_the_forecasts_waiting_for_their_actuals(
    tmp_path: Path, stream: ReadingBatch
) -> None:
    store = CheckpointStore(tmp_path, "g")
    tasks = TaskSet()
    head = stream.take(np.arange(400))
    tasks.process(head, np.zeros(len(head), dtype=np.int64), [A], NOW_MS)
    task = tasks.tasks[A]
    assert task.accuracy.pending > 0
    store.save(A, 400, task.processor, task.accuracy)
    ck = store.load(A)
    assert ck is not None and ck.accuracy is not None
    assert ck.accuracy.pending == task.accuracy.pending
    for name, arr in task.accuracy.snapshot().items():
        np.testing.assert_array_equal(ck.accuracy.snapshot()[name], arr)


class _RunsCode:
    """What unpickling an old checkpoint could do: run code (here, write a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.parametrize("old_format", [1, 2])
def test_a_checkpoint_of_the_previous_pickle_format_is_refused_and_replayed(
    tmp_path: Path, old_format: int
) -> None:
    import hashlib
    import pickle

    store = CheckpointStore(tmp_path, "g")
    marker = tmp_path / "ran"
    # exactly what the earlier writer put on disk: a JSON header line, then a pickle
    blob = pickle.dumps({"format": 2, "params": ProcessorParams(), "state": _RunsCode(marker)})
    header = {
        "format": old_format,
        "topic": A[0],
        "partition": A[1],
        "position": 40,
        "created_ms": 1,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
    }
    if old_format == 2:
        header["sections"] = [["processor", len(blob)]]
    store.path(A).write_bytes(json.dumps(header).encode() + b"\n" + blob)

    states = PartitionStates(TaskSet(), store)
    seeks = states.assign({A: 100})
    assert seeks == {A: BEGINNING}  # the whole retained partition is replayed
    assert states.counters["checkpoints_refused_format"] == 1
    assert states.counters["resumed_from_replay"] == 1
    assert states.counters["checkpoint_errors"] == 0  # an upgrade, not damage
    assert not marker.exists()  # nothing was unpickled
    # the next checkpoint of the partition is written in the current format and loads
    task = states.tasks.tasks[A]
    task.position = 100
    states.checkpoint_all()
    ck = store.load(A)
    assert ck is not None and ck.position == 100


@pytest.mark.parametrize("damage", ["truncate", "flip", "other_partition", "garbage"])
def test_damaged_checkpoint_is_refused_not_unpickled(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(tmp_path, "g")
    store.save(A, 5, GridProcessor())
    path = store.path(A)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "other_partition":
        line, _, blob = data.partition(b"\n")
        header = json.loads(line)
        header["partition"] = 1
        path.write_bytes(json.dumps(header).encode() + b"\n" + blob)
    else:
        path.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(CheckpointError, match=str(path.name)):
        store.load(A)


def test_temp_files_of_killed_checkpoint_writes_are_removed_at_start_and_counted(
    tmp_path: Path,
) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    store = CheckpointStore(tmp_path, "g")
    store.save(A, 5, GridProcessor())
    name = store.path(A).name
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],  # noqa: S603
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    old = time.time() - 3600
    files = {
        f".{name}.{host}.{dead_pid}.tmp": (None, True),  # this host, writer gone: at once
        f".{name}.{host}.{os.getppid()}.tmp": (None, False),  # this host, writer alive
        f".{name}.other-host.123.tmp": (None, False),  # another host: may be writing now
        f".{name}.other-host.124.tmp": (old, True),  # another host, far too old to be a write
        f".{name}.6996.tmp": (old, True),  # the earlier naming, old
        f".{name}.6997.tmp": (None, False),  # the earlier naming, fresh
    }
    for fname, (mtime, _) in files.items():
        (store.dir / fname).write_bytes(b"half a checkpoint")
        if mtime is not None:
            os.utime(store.dir / fname, (mtime, mtime))
    states = PartitionStates(TaskSet(), store)
    assert states.counters["orphaned_temp_files_removed"] == 3
    for fname, (_, orphan) in files.items():
        assert (store.dir / fname).exists() != orphan, fname
    ck = store.load(A)
    assert ck is not None and ck.position == 5  # the checkpoint itself is untouched


def test_assignment_prefers_the_newest_state_not_ahead_of_the_commit(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "g")
    tasks = TaskSet()
    states = PartitionStates(tasks, store, interval_s=0.0)
    store.save(A, 40, GridProcessor())
    store.save(B, 90, GridProcessor())
    seeks = states.assign({A: 100, B: 60})
    # A: checkpoint at 40 <= 100, replay 40..100; B: checkpoint at 90 is ahead of 60 (offsets
    # reset?): not usable, so the partition is replayed from its start to 60
    assert seeks == {A: 40, B: BEGINNING}
    assert states.replay_until == {A: 100, B: 60}
    assert tasks.tasks[A].position == 40 and tasks.tasks[B].position == 0
    assert states.counters["resumed_from_checkpoint"] == 1
    assert states.counters["resumed_from_replay"] == 1

    states.advance({A: 70, B: 60})
    assert states.replay_until == {A: 100}
    states.advance({A: 100, B: 75})
    assert states.replay_until == {}
    # a revoked task is checkpointed at its position and reused in memory if it comes back
    states.revoke([A, B])
    assert store.load(A).position == 100 and store.load(B).position == 75
    seeks = states.assign({A: 100, B: 80})
    assert seeks == {B: 75}
    assert states.counters["resumed_from_memory"] == 2


def test_no_committed_offset_starts_cold_and_other_parameters_are_not_restored(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path, "g")
    store.save(A, 10, GridProcessor(ProcessorParams(warmup=3)))
    states = PartitionStates(TaskSet(), store)
    assert states.assign({A: 50}) == {A: BEGINNING}  # other parameters: unused, replayed
    assert states.counters["checkpoint_errors"] == 1
    states = PartitionStates(TaskSet(ProcessorParams(warmup=3)), store)
    assert states.assign({A: -1}) == {}
    assert states.counters["cold_starts"] == 1


def test_in_flight_task_revoked_mid_batch_is_dropped_not_checkpointed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "g")
    states = PartitionStates(TaskSet(), store)
    assert states.assign({A: 0}) == {}  # nothing committed yet: nothing to replay
    states.advance({A: 10})
    states.in_flight.add(A)  # a batch processed, its outputs still being retried
    states.revoke([A])
    assert store.load(A) is None and states.counters["dropped_in_flight"] == 1


def test_due_checkpoints_are_written_one_per_batch(tmp_path: Path) -> None:
    clock = [0.0]
    store = CheckpointStore(tmp_path, "g")
    states = PartitionStates(TaskSet(), store, interval_s=5.0, monotonic=lambda: clock[0])
    states.assign({A: 0, B: 0})
    states.advance({A: 3, B: 4})
    states.checkpoint_one_due()
    assert states.counters["checkpoints"] == 0  # not due yet
    clock[0] = 6.0
    states.checkpoint_one_due()
    states.checkpoint_one_due()
    assert states.counters["checkpoints"] == 2
    assert store.load(A).position == 3 and store.load(B).position == 4


def test_failpoints_parse_and_refuse_unknown_points() -> None:
    assert parse("between_outputs=0.5, before_commit") == {
        "between_outputs": 0.5,
        "before_commit": 1.0,
    }
    with pytest.raises(FailpointError, match="unknown point 'nowhere'"):
        parse("nowhere=1")
    with pytest.raises(FailpointError, match="probability"):
        parse("after_commit=2")
    Failpoints({"after_commit": 0.0}).hit("after_commit")  # armed at 0: never fires


def test_without_a_state_dir_a_partition_starts_cold_at_its_commit() -> None:
    states = PartitionStates(TaskSet(), None)
    assert states.assign({A: 500}) == {}
    assert states.tasks.tasks[A].position == 500
    assert states.counters["resumed_from_cold"] == 1
