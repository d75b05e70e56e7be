"""Pacing of the balance's repartition: keep the input partitions close in reading time.

The balance closes an interval once the newest reading (of the slower of meters and SCADA, and
at most a ring of ``lateness + 2`` intervals behind the newest of either) has passed it. The
repartition stage forwards readings in whatever order its consumer fetches them across the
meter and SCADA partitions. A backlog longer than the lateness (a killed life leaves its own
slice unread, and the next life reads it together with the next slice) lets a fast partition,
e.g. SCADA with few records per hour, run more than the lateness ahead of a slow one; the slow
one's readings then close late and are counted, not balanced, so the rows depend on timing.

Pausing every partition that runs ahead of the slowest one still holding records keeps the
spread of forwarded reading times within a budget, so no reading reaches the balance late
whatever the fetch order. Pure: the stage supplies the times and which partitions are drained.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Set

from confluent_kafka import Consumer, TopicPartition

START = "start"  # key of ``newest_ms``: the first reading time of the assignment


def _floors(newest_ms: Mapping[Hashable, int], drained: Set[Hashable], unseen: bool) -> dict:
    """Times that hold the others back: undrained partitions', and the assignment's first
    reading time while some partition has not shown a record yet (it may hold older ones)."""
    return {k: t for k, t in newest_ms.items() if k not in drained and (k != START or unseen)}


def ahead(
    newest_ms: Mapping[Hashable, int], drained: Set[Hashable], budget_ms: int, unseen: bool = False
) -> set:
    """Partitions to pause: forwarded readings more than ``budget_ms`` past the slowest one.

    ``newest_ms`` is the newest reading time forwarded per partition; ``drained`` partitions (at
    the end of their log) hold nothing back, so they do not slow the others."""
    waiting = _floors(newest_ms, drained, unseen)
    if not waiting:
        return set()
    floor = min(waiting.values())
    return {key for key, t in newest_ms.items() if key != START and t > floor + budget_ms}


def hold(
    keys: list[Hashable],
    ts_ms: list[int | None],
    newest_ms: dict[Hashable, int],
    drained: Set[Hashable],
    budget_ms: int,
    unseen: bool = False,
) -> list[bool]:
    """Which records of a batch (in fetch order) to hold back, updating ``newest_ms``.

    A record is held when it runs more than ``budget_ms`` past the slowest other undrained
    partition seen; so are the later ones of its partition, to keep its order. A batch can span
    hours of a sparse partition, so pausing after the batch would be too coarse. ``None`` times
    (undecodable records) are never held; ``unseen``: some partition has shown no record yet."""
    held: set[Hashable] = set()
    out = []
    for key, ts in zip(keys, ts_ms, strict=True):
        if key not in held and ts is not None:
            newest_ms.setdefault(START, ts)
            others = [t for k, t in _floors(newest_ms, drained, unseen).items() if k != key]
            if others and ts > min(others) + budget_ms:
                held.add(key)
            else:
                newest_ms[key] = max(newest_ms.get(key, ts), ts)
                newest_ms[START] = min(newest_ms[START], ts)
        out.append(key in held)
    return out


class Pacer:
    """The repartition consumer's pacing state: held records per partition, uncommitted and
    paused, released in order once the slowest partition catches up or drains."""

    def __init__(self, budget_ms: int, count: Callable[[str, int], None]) -> None:
        self.budget_ms = budget_ms
        self.count = count
        self.newest_in: dict[tuple[str, int], int] = {}  # newest reading per input partition
        self.paused: set[tuple[str, int]] = set()
        self.drained: set[tuple[str, int]] = set()
        self.backlog: dict[tuple[str, int], list] = {}  # held records, in order, uncommitted
        self.head_ts: dict[tuple[str, int], int] = {}  # reading time of each backlog's first

    def reset(self, _consumer: Consumer, _parts: list[TopicPartition]) -> None:
        """A new assignment starts unpaused, each partition's times learnt again."""
        self.newest_in.clear()
        self.paused.clear()
        self.drained.clear()
        self.backlog.clear()
        self.head_ts.clear()

    def unheld(self, fresh: list) -> list:
        """Held records of resumed partitions, then the fresh ones; a paused partition's fresh
        records (fetched before the pause) join its backlog, behind the held ones."""
        ready = []
        for key in [k for k in self.backlog if k not in self.paused]:
            ready += self.backlog.pop(key)
            self.head_ts.pop(key, None)
        out = []
        for m in fresh:
            key = (m.topic(), m.partition())
            if key in self.paused or key in self.backlog:
                self.backlog.setdefault(key, []).append(m)
            else:
                out.append(m)
        return ready + out

    def pace(
        self,
        consumer: Consumer,
        msgs: list,
        ts_of: dict[int, int] | None = None,
        empty: bool = False,
    ) -> list[bool]:
        """Hold back (in ``backlog``) records of partitions that run ahead of the slowest one
        still holding records; pause and resume partitions to match. Which of ``msgs`` are held.

        An ``empty`` consume (nothing from the unpaused partitions) marks them drained, so a
        partition at the end of its log holds nothing back."""
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        if empty:
            self.drained |= assigned - self.paused - set(self.backlog)
        keys = [(m.topic(), m.partition()) for m in msgs]
        self.drained -= set(keys)
        times = [(ts_of or {}).get(j) for j in range(len(msgs))]
        unseen = bool(assigned - self.drained - set(self.newest_in))
        held = hold(keys, times, self.newest_in, self.drained, self.budget_ms, unseen)
        for m, key, ts, h in zip(msgs, keys, times, held, strict=True):
            if h:
                self.backlog.setdefault(key, []).append(m)
                self.head_ts.setdefault(key, ts)
        self._repause(consumer, unseen)
        return held

    def _repause(self, consumer: Consumer, unseen: bool) -> None:
        """Pause what runs ahead and every backlog whose first record is still past the
        budget; resume the rest."""
        budget, newest = self.budget_ms, self.newest_in
        wait = {
            key
            for key, ts in self.head_ts.items()
            if hold([key], [ts], dict(newest), self.drained, budget, unseen)[0]
        }
        pause = ahead(newest, self.drained, budget, unseen) | wait
        if pause - self.paused:
            consumer.pause([TopicPartition(t, p) for t, p in pause - self.paused])
            self.count("balance_paced", len(pause - self.paused))
        if self.paused - pause:
            consumer.resume([TopicPartition(t, p) for t, p in self.paused - pause])
        self.paused = pause
