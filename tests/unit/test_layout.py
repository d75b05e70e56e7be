"""The partition count state was built with: recorded, compared, refused or reset."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.state.checkpoints import CheckpointStore
from streams.state.layout import PartitionCountChanged, PartitionLayout
from streams.state.recovery import PartitionStates
from streams.state.tasks import TaskSet


def test_a_new_topic_is_recorded_and_the_same_count_passes(tmp_path: Path) -> None:
    layout = PartitionLayout(tmp_path)
    assert layout.check({"meter": 4}) == []
    assert PartitionLayout(tmp_path).known == {"meter": 4}  # on disk, for the next worker
    assert PartitionLayout(tmp_path).check({"meter": 4}) == []


def test_another_count_is_refused_with_the_way_on(tmp_path: Path) -> None:
    PartitionLayout(tmp_path).check({"meter": 4})
    with pytest.raises(PartitionCountChanged, match=r"meter has 8 partitions.*built with 4"):
        PartitionLayout(tmp_path).check({"meter": 8})
    assert PartitionLayout(tmp_path).known == {"meter": 4}  # refusing changes nothing


def test_without_a_state_dir_a_change_during_the_run_is_refused_too() -> None:
    layout = PartitionLayout(None)
    layout.check({"meter": 4})
    with pytest.raises(PartitionCountChanged, match="ON_PARTITION_CHANGE=reset"):
        layout.check({"meter": 8})


def test_reset_discards_the_topics_state_and_records_the_new_count(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "g")
    tasks = TaskSet()
    states = PartitionStates(tasks, store)
    states.assign({("meter", 0): -1, ("scada", 0): -1})
    states.tasks.tasks[("meter", 0)].position = 40
    for tid in list(states.tasks.tasks):
        store.save(tid, 0, states.tasks.tasks[tid].processor)
    old = states.tasks.tasks[("meter", 0)].processor
    layout = PartitionLayout(store.dir, "reset")
    layout.check({"meter": 4, "scada": 2})
    assert layout.check({"meter": 8, "scada": 2}) == ["meter"]
    states.reset_topic("meter")
    assert states.tasks.tasks[("meter", 0)].processor is not old
    assert states.tasks.tasks[("meter", 0)].position == 40  # continues where it was
    assert [p.name for p in store.dir.glob("*.ckpt")] == ["scada.0.ckpt"]
    assert states.counters["partition_layout_resets"] == 1
    assert PartitionLayout(store.dir).known == {"meter": 8, "scada": 2}


def test_an_unreadable_layout_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    (tmp_path / "layout.json").write_text("{not json")
    with pytest.raises(PartitionCountChanged, match="layout.json: unreadable"):
        PartitionLayout(tmp_path)
