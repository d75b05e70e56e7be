"""Fair batches from per-partition buffers (pure: real Message objects, no broker)."""

from __future__ import annotations

from collections import Counter

import pytest
from confluent_kafka import Message

from streams.runtime.fairness import FairBuffer


def records(partition: int, n: int, start: int = 0) -> list[Message]:
    return [Message(topic="t", partition=partition, offset=start + i) for i in range(n)]


def drain(buf: FairBuffer) -> list[Counter[int]]:
    batches = []
    while len(buf):
        batches.append(Counter(m.partition() for m in buf.take()))
    return batches


def test_a_batch_shares_itself_among_every_partition_with_records() -> None:
    buf = FairBuffer(batch_size=16, limit=10_000)
    buf.add(records(5, 2400) + records(3, 2400) + records(0, 100) + records(4, 5))
    first = Counter(m.partition() for m in buf.take())
    assert sum(first.values()) == 16 and set(first) == {0, 3, 4, 5}
    assert min(first.values()) == 4  # 16 / 4 partitions
    batches = drain(buf)
    assert sum(sum(b.values()) for b in batches) == 2400 * 2 + 100 + 5 - 16


def test_a_short_partition_leaves_its_share_to_the_others() -> None:
    buf = FairBuffer(batch_size=100, limit=10_000)
    buf.add(records(0, 1000) + records(1, 3))
    batch = Counter(m.partition() for m in buf.take())
    assert batch == Counter({0: 97, 1: 3})


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_more_partitions_than_a_batch_holds_each_progress_within_a_bounded_number(
    batch_size: int,
) -> None:
    partitions = 12
    buf = FairBuffer(batch_size=batch_size, limit=10_000)
    for p in range(partitions):
        buf.add(records(p, 50))
    bound = -(-partitions // batch_size)  # ceil
    last_seen = dict.fromkeys(range(partitions), 0)
    for i, batch in enumerate(drain(buf), start=1):
        for p in batch:
            last_seen[p] = i
        for p in range(partitions):
            if buf.buffered(("t", p)):
                assert i - last_seen[p] < bound, (p, i, last_seen[p])


def test_records_keep_their_order_within_a_partition() -> None:
    buf = FairBuffer(batch_size=7, limit=10_000)
    buf.add(records(0, 30) + records(1, 30))
    buf.add(records(0, 30, start=30))
    seen: dict[int, list[int]] = {0: [], 1: []}
    while len(buf):
        for m in buf.take():
            seen[m.partition()].append(m.offset())
    assert seen == {0: list(range(60)), 1: list(range(30))}


def test_a_full_buffer_asks_for_a_pause_and_a_drained_one_for_a_resume() -> None:
    buf = FairBuffer(batch_size=10, limit=40)
    assert buf.add(records(0, 39)) == []
    assert buf.add(records(0, 1, start=39)) == [("t", 0)]
    assert buf.add(records(1, 5)) == []  # already paused partitions are not reported twice
    assert buf.resumable() == []
    while buf.buffered(("t", 0)) > 20:
        buf.take()
    assert buf.resumable() == [("t", 0)] and not buf.paused
    held = len(buf)
    assert buf.drop([("t", 0), ("t", 1)]) == held and len(buf) == 0
