"""Partition tasks: one streaming core per input partition, the unit of state that moves.

Kafka assigns partitions, not entities, and every reading of an entity arrives on one partition
(the key is the entity id). Keeping one ``GridProcessor`` per (topic, partition), as Kafka Streams
keeps one task per partition, makes *all* state move with its partition: windows and detector
memories, and also the shared river model and the drift detectors, which would otherwise mix the
history of entities this worker happens to hold. A task is checkpointed and restored as a whole,
so scores after a rebalance equal the scores without one.

``position`` is the offset of the next reading a task has not seen: its state reflects exactly
the readings below it. That is the invariant checkpoints and replays rely on.

A task also holds the forecasts of its entities that wait for their actual reading
(``streams.ops.accuracy``), so the live forecast error survives a restore like the windows do.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields

import numpy as np

from models.ensemble import NowcastEnsemble
from models.params import ProcessorParams
from models.processor import GridProcessor, ProcessResult
from schemas.batch import ForecastBatch, ReadingBatch
from streams.ops.accuracy import ForecastAccuracy, Matches

TaskId = tuple[str, int]  # (topic, partition)


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each key under librdkafka's default partitioner (``consistent_random``:
    CRC-32 of the key bytes modulo the partition count), which the simulator and every
    confluent-kafka producer use; a backtest places each entity where a live run finds it.

    >>> partition_of(np.array(["m-1", "m-2", "m-1"]), 4).tolist()
    [0, 2, 0]
    """
    if partitions == 1:
        return np.zeros(len(keys), dtype=np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    per_key = [zlib.crc32(k.encode()) % partitions for k in uniq.tolist()]
    return np.asarray(per_key, dtype=np.int64)[inverse]


@dataclass(slots=True)
class Task:
    """One partition's core and how far into the partition its state reaches."""

    processor: GridProcessor
    position: int = -1  # next offset not yet reflected in the state; -1: nothing seen
    checkpointed: int = -1  # position of the last checkpoint written for this task
    accuracy: ForecastAccuracy = field(default_factory=ForecastAccuracy)

    def track(self, batch: ReadingBatch, result: ProcessResult) -> Matches:
        """Feed a batch and its result to the task's forecast-error tracker; its matches."""
        return self.accuracy.track(batch, result)


@dataclass(slots=True)
class TaskOutput:
    """What a batch published: its live readings, their result (indexed like ``readings``),
    the forecast errors measured on them, and how many rows were replayed instead."""

    readings: ReadingBatch
    result: ProcessResult
    replayed: int = 0
    apes: dict[int, np.ndarray] = field(default_factory=dict)
    errors: Matches = field(default_factory=Matches.none)  # the live rows' matches


class TaskSet:
    """The tasks of the partitions a worker holds; looks like one processor to the monitor."""

    def __init__(
        self, params: ProcessorParams | None = None, ensemble: NowcastEnsemble | None = None
    ) -> None:
        self.params = params or ProcessorParams()
        self._ensemble = ensemble
        self.tasks: dict[TaskId, Task] = {}
        self._proto = GridProcessor(self.params, ensemble=ensemble)  # versions before any task

    # -- what the monitor reads ---------------------------------------------------------------
    @property
    def entities(self) -> int:
        return sum(t.processor.entities for t in self.tasks.values())

    @property
    def model_versions(self) -> dict[str, str]:
        return dict(self._proto.model_versions)

    @property
    def model(self) -> str:
        return self._proto.model

    def set_ensemble(self, ensemble: NowcastEnsemble | None) -> None:
        """Hot reload: every task and every task created later serves ``ensemble``."""
        self._ensemble = ensemble
        self._proto.set_ensemble(ensemble)
        for task in self.tasks.values():
            task.processor.set_ensemble(ensemble)

    # -- tasks --------------------------------------------------------------------------------
    def new_processor(self) -> GridProcessor:
        return GridProcessor(self.params, ensemble=self._ensemble)

    def adopt(
        self,
        tid: TaskId,
        processor: GridProcessor,
        position: int,
        accuracy: ForecastAccuracy | None = None,
    ) -> Task:
        """Install ``processor`` (fresh or restored) as the task of ``tid``."""
        processor.set_ensemble(self._ensemble)
        task = Task(processor, position, accuracy=accuracy or ForecastAccuracy())
        self.tasks[tid] = task
        return task

    @property
    def forecasts_awaiting(self) -> int:
        return sum(t.accuracy.pending for t in self.tasks.values())

    def task(self, tid: TaskId) -> Task:
        task = self.tasks.get(tid)
        if task is None:
            task = self.adopt(tid, self.new_processor(), -1)
        return task

    def pop(self, tid: TaskId) -> Task | None:
        return self.tasks.pop(tid, None)

    # -- processing ---------------------------------------------------------------------------
    def process(
        self,
        batch: ReadingBatch,
        task_of_row: np.ndarray,
        tids: list[TaskId],
        now_ms: int,
        replay_rows: np.ndarray | None = None,
    ) -> TaskOutput:
        """Process each task's rows on its own core; the live rows and their merged result.

        Rows flagged in ``replay_rows`` rebuild state only: they are processed before the task's
        other rows (they precede them in the partition), their forecasts join the task's error
        tracker without being scored, and their outputs are dropped, because they were published
        (and scored) before the crash or move that made the replay necessary. The result indexes
        the live rows only, ``TaskOutput.readings``, so the two can never disagree in length.
        """
        live = None if replay_rows is None or not replay_rows.any() else ~replay_rows
        out_batch = batch if live is None else batch.take(live)
        out_task = task_of_row if live is None else task_of_row[live]
        parts: list[tuple[np.ndarray, ProcessResult]] = []
        apes: dict[int, list[np.ndarray]] = {}
        matches: list[Matches] = []
        replayed = 0
        for t in np.unique(task_of_row):
            task = self.task(tids[int(t)])
            if live is not None:
                again = (task_of_row == t) & replay_rows
                if again.any():
                    part = batch.take(again)
                    task.track(part, task.processor.process_batch(part, now_ms))
                    replayed += int(again.sum())
            rows = np.flatnonzero(out_task == t)
            if rows.size:
                part = out_batch if rows.size == len(out_batch) else out_batch.take(rows)
                res = task.processor.process_batch(part, now_ms)
                parts.append((rows, res))
                matches.append(task.track(part, res))
                for h, ape in matches[-1].apes_by_horizon().items():
                    apes.setdefault(h, []).append(ape)
        result = merge_results(parts, len(out_batch), self.model)
        merged = {h: a[0] if len(a) == 1 else np.concatenate(a) for h, a in apes.items()}
        return TaskOutput(out_batch, result, replayed, merged, Matches.concat(matches))


def merge_results(
    parts: list[tuple[np.ndarray, ProcessResult]], n: int, model: str
) -> ProcessResult:
    """One ``ProcessResult`` for a batch of ``n`` rows from the results of row subsets."""
    if len(parts) == 1 and parts[0][0].size == n:
        return parts[0][1]
    merged = ProcessResult.blank(n, model)
    forecast_parts: list[ForecastBatch] = []
    forecast_rows: list[np.ndarray] = []
    for rows, res in parts:
        merged.score[rows] = res.score
        merged.severity[rows] = res.severity
        merged.expected[rows] = res.expected
        if res.residual_z.size:
            merged.residual_z[rows] = res.residual_z
        merged.anomalies.extend(res.anomalies)
        merged.rejections.extend(res.rejections)
        merged.drift_events.extend(res.drift_events)
        merged.counters.update(res.counters)
        for name, seconds in res.timings.items():
            merged.timings[name] = merged.timings.get(name, 0.0) + seconds
        if len(res.forecasts):
            forecast_parts.append(res.forecasts)
            forecast_rows.append(rows[res.forecast_rows])
    merged.rejections.sort(key=lambda r: r.src_index)
    if forecast_parts:
        merged.forecasts = concat_forecasts(forecast_parts)
        merged.forecast_rows = np.concatenate(forecast_rows)
    return merged


def concat_forecasts(parts: list[ForecastBatch]) -> ForecastBatch:
    """Forecast batches of one model set joined end to end."""
    if len(parts) == 1:
        return parts[0]
    columns = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in fields(ForecastBatch)
        if f.name != "model"
    }
    return ForecastBatch(**columns, model=parts[0].model)
