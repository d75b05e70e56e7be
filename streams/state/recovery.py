"""Which state a partition resumes from when it is assigned, and when its state is saved.

On assignment the newest usable state that is not ahead of the group's committed offset wins:
the worker's own in-memory task (it held the partition before the rebalance) or the partition's
checkpoint (written by whichever worker held it). If that state stops short of the committed
offset, the readings in between are replayed through the core without publishing: they were
published before the crash or move, and processing them again rebuilds the exact state. With
neither (no checkpoint yet, or a damaged one), the whole retained partition is replayed up to the
committed offset. Only without a state directory at all does a partition start cold at the
committed offset, its entities warming up again as in a fresh deployment.

State is saved at committed positions only: at most one partition per batch once its interval
has passed (so no batch pays for all of them), every partition on revocation and on shutdown.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from streams.state.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointFormatError,
    CheckpointStore,
)
from streams.state.tasks import Task, TaskId, TaskSet

log = logging.getLogger("gridstream.recovery")

BEGINNING = -2  # confluent_kafka.OFFSET_BEGINNING: the oldest offset the broker still holds


class PartitionStates:
    """Tasks of the assigned partitions, their replay bounds and their checkpoints."""

    def __init__(
        self,
        tasks: TaskSet,
        store: CheckpointStore | None,
        interval_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tasks = tasks
        self.store = store
        self.interval_s = interval_s
        self._monotonic = monotonic
        self.replay_until: dict[TaskId, int] = {}  # replay below this offset, publish from it
        self.in_flight: set[TaskId] = set()  # tasks whose state is ahead of their position
        self.counters: Counter[str] = Counter()
        self._parked: dict[TaskId, Task] = {}  # revoked, kept in case they come straight back
        self._due: dict[TaskId, float] = {}
        if store is not None:
            self.remove_orphans()

    def remove_orphans(self) -> None:
        """Remove (and count) temp files of checkpoint writes killed in an earlier life."""
        assert self.store is not None
        try:
            removed = self.store.remove_orphans()
        except OSError as exc:  # an unreadable directory shows in the saves that follow
            log.warning("%s: cannot look for checkpoint temp files: %s", self.store.dir, exc)
            return
        if removed:
            self.counters["orphaned_temp_files_removed"] += len(removed)
            log.info(
                "removed %d temp file(s) of checkpoint writes that were cut short: %s",
                len(removed),
                ", ".join(p.name for p in removed),
            )

    # -- assignment ---------------------------------------------------------------------------
    def assign(self, committed: dict[TaskId, int]) -> dict[TaskId, int]:
        """Install a task for each partition (committed offset, -1 if none).

        Returns the partitions that must be read from an earlier offset than the committed
        one to replay, with that offset.
        """
        seeks: dict[TaskId, int] = {}
        for tid, offset in committed.items():
            task = self._resume(tid, offset)
            self._due[tid] = self._monotonic() + self.interval_s
            if 0 <= task.position < offset:
                self.replay_until[tid] = offset
                seeks[tid] = task.position if task.position > 0 else BEGINNING
            else:
                self.replay_until.pop(tid, None)
        self._parked.clear()  # parked tasks not assigned back belong to another worker now
        return seeks

    def _resume(self, tid: TaskId, committed: int) -> Task:
        held = self._parked.pop(tid, None) or self.tasks.pop(tid)
        if committed < 0:  # no committed offset: the reset policy decides, state cannot match
            self.counters["cold_starts"] += 1
            return self.tasks.adopt(tid, self.tasks.new_processor(), -1)
        best: tuple[int, Task | None, str] = (-1, None, "cold")
        if held is not None and 0 <= held.position <= committed:
            best = (held.position, held, "memory")
        checkpoint = self._load(tid)
        if checkpoint is not None:
            if checkpoint.position > committed:
                log.warning(
                    "%s/%d: checkpoint at offset %d is ahead of the committed offset %d "
                    "(offsets reset?); not using it",
                    *tid,
                    checkpoint.position,
                    committed,
                )
            elif checkpoint.position > best[0]:
                task = Task(checkpoint.processor, checkpoint.position, checkpoint.position)
                if checkpoint.accuracy is not None:
                    task.accuracy = checkpoint.accuracy
                best = (checkpoint.position, task, "checkpoint")
        position, chosen, source = best
        if chosen is None and self.store is not None:
            source = "replay"  # no usable state: rebuild it from the partition's retained log
        self.counters[f"resumed_from_{source}"] += 1
        if chosen is None:
            start = 0 if source == "replay" else committed
            if source == "replay" and committed > 0:
                log.info(
                    "%s/%d: no checkpoint; replaying the partition to offset %d", *tid, committed
                )
            return self.tasks.adopt(tid, self.tasks.new_processor(), start)
        task = self.tasks.adopt(tid, chosen.processor, position, chosen.accuracy)
        task.checkpointed = chosen.checkpointed
        log.info(
            "%s/%d: state from %s at offset %d; replaying %d readings to the committed %d",
            *tid,
            source,
            position,
            committed - position,
            committed,
        )
        return task

    def _load(self, tid: TaskId) -> Checkpoint | None:
        if self.store is None:
            return None
        try:
            checkpoint = self.store.load(tid)
        except CheckpointFormatError as exc:  # an upgrade changed the state layout: replay
            self.counters["checkpoints_refused_format"] += 1
            log.warning("%s; rebuilding the partition by replay", exc)
            return None
        except CheckpointError as exc:
            self.counters["checkpoint_errors"] += 1
            log.error("%s", exc)
            return None
        if checkpoint is not None and checkpoint.processor.params != self.tasks.params:
            self.counters["checkpoint_errors"] += 1
            log.warning("%s/%d: checkpoint made with other processing parameters; unused", *tid)
            return None
        return checkpoint

    def revoke(self, tids: list[TaskId]) -> None:
        """Checkpoint and park the tasks of revoked partitions."""
        for tid in tids:
            task = self.tasks.pop(tid)
            self.replay_until.pop(tid, None)
            self._due.pop(tid, None)
            if task is None:
                continue
            if tid in self.in_flight:
                # Revoked while its batch waits for a sink: the state is ahead of the position.
                # Drop it; the next owner rebuilds it from the last checkpoint and the topic.
                self.counters["dropped_in_flight"] += 1
                continue
            self._save(tid, task)
            self._parked[tid] = task

    def reset_topic(self, topic: str) -> None:
        """Discard every state of ``topic``'s partitions (``streams.state.layout``: reset)."""
        for tid in [t for t in self.tasks.tasks if t[0] == topic]:
            old = self.tasks.pop(tid)
            assert old is not None
            self.tasks.adopt(tid, self.tasks.new_processor(), old.position)
            self.replay_until.pop(tid, None)
        self._parked = {t: task for t, task in self._parked.items() if t[0] != topic}
        if self.store is not None:
            for path in self.store.dir.glob(f"{topic}.*.ckpt"):
                path.unlink(missing_ok=True)
        self.counters["partition_layout_resets"] += 1

    # -- after each batch ---------------------------------------------------------------------
    def advance(self, positions: dict[TaskId, int]) -> None:
        """The batch is committed: each task's state now reaches ``positions[tid]``."""
        for tid, position in positions.items():
            task = self.tasks.tasks.get(tid)
            if task is None:
                continue
            task.position = max(task.position, position)
            bound = self.replay_until.get(tid)
            if bound is not None and task.position >= bound:
                del self.replay_until[tid]
        self.in_flight.clear()

    def checkpoint_one_due(self) -> None:
        """Save the partition whose checkpoint is most overdue, if any is due."""
        if self.store is None or not self._due:
            return
        tid = min(self._due, key=self._due.__getitem__)
        if self._due[tid] > self._monotonic():
            return
        self._due[tid] = self._monotonic() + self.interval_s
        task = self.tasks.tasks.get(tid)
        if task is not None:
            self._save(tid, task)

    def checkpoint_all(self) -> None:
        for tid, task in list(self.tasks.tasks.items()):
            if tid not in self.in_flight:
                self._save(tid, task)

    def _save(self, tid: TaskId, task: Task) -> None:
        if self.store is None or task.position < 0 or task.position == task.checkpointed:
            return
        try:
            nbytes = self.store.save(tid, task.position, task.processor, task.accuracy)
        except OSError as exc:  # a full disk must not stop scoring; restarts just replay more
            self.counters["checkpoint_errors"] += 1
            log.error("%s/%d: checkpoint failed: %s", *tid, exc)
            return
        task.checkpointed = task.position
        log.debug("%s/%d: checkpoint at offset %d (%d bytes)", *tid, task.position, nbytes)
        self.counters["checkpoints"] += 1
        self.counters["checkpoint_bytes"] += nbytes
