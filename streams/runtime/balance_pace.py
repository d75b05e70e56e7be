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

from collections.abc import Hashable, Mapping, Set

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
