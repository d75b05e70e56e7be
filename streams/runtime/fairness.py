"""Fair batches: every partition with records waiting gets a share of every batch.

Why the runner cannot just take ``consumer.consume(n)``: librdkafka prefetches each partition's
backlog (up to ``queued.min.messages``, 100k, per partition) into one FIFO queue, a fetch returns
whole producer record batches (``max.partition.fetch.bytes`` does not split them), and
``consume(n)`` returns the head of that queue. With a backlog and small batches the processor
then drains one partition's whole backlog after another while the others wait, however long
(measured on the embedded broker: with batches of 16, a partition's first record came in batch
460). Kafka Streams solves the same problem with per-partition record queues and pausing.

So the runner keeps one buffer per partition between the consumer and the batch:
- ``add`` files consumed records by partition and reports the partitions whose buffer reached
  ``limit``; the runner pauses them, which also discards what librdkafka prefetched for them, so
  the next ``consume`` reaches the other partitions' records (a paused partition resumes at the
  record after the last one buffered: nothing skipped, nothing twice);
- ``take`` builds a batch of up to ``batch_size`` records by water-filling: every partition with
  buffered records gets an equal share (what a short partition leaves is shared by the rest), and
  the order rotates so with more partitions than ``batch_size`` each still gets a record within
  ``ceil(partitions / batch_size)`` batches;
- ``resumable`` reports paused partitions whose buffer fell below half the limit.

Records keep their order within a partition; a batch is what the runner already handled (any mix
of partitions). Memory is bounded by partitions x (limit + one consume).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from confluent_kafka import Message

PartitionKey = tuple[str, int]
MIN_LIMIT = 1024  # records buffered per partition before it is paused (at least one batch)


class FairBuffer:
    """Per-partition record buffers and fair batches drawn from them."""

    def __init__(self, batch_size: int, limit: int | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.limit = limit or max(batch_size, MIN_LIMIT)
        self.paused: set[PartitionKey] = set()
        self._bufs: dict[PartitionKey, deque[Message]] = {}
        self._turn = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def buffered(self, key: PartitionKey) -> int:
        buf = self._bufs.get(key)
        return len(buf) if buf else 0

    def add(self, msgs: Iterable[Message]) -> list[PartitionKey]:
        """Buffer consumed records (without errors); the partitions to pause now."""
        for m in msgs:
            key = (m.topic(), m.partition())
            buf = self._bufs.get(key)
            if buf is None:
                buf = self._bufs[key] = deque()
            buf.append(m)
            self._size += 1
        full = [k for k, b in self._bufs.items() if len(b) >= self.limit and k not in self.paused]
        self.paused.update(full)
        return full

    def take(self) -> list[Message]:
        """Up to ``batch_size`` records, shared fairly among the partitions that have some."""
        active = [k for k, b in self._bufs.items() if b]
        if not active:
            return []
        start = self._turn % len(active)
        self._turn += 1
        order = active[start:] + active[:start]
        quota = dict.fromkeys(order, 0)
        left = min(self.batch_size, self._size)
        pending = order
        while left > 0 and pending:
            share = max(1, left // len(pending))
            still = []
            for k in pending:
                give = min(share, len(self._bufs[k]) - quota[k], left)
                quota[k] += give
                left -= give
                if quota[k] < len(self._bufs[k]):
                    still.append(k)
                if left == 0:
                    break
            pending = still
        out: list[Message] = []
        for k, n in quota.items():
            buf = self._bufs[k]
            out.extend(buf.popleft() for _ in range(n))
        self._size -= len(out)
        return out

    def resumable(self) -> list[PartitionKey]:
        """Paused partitions whose buffer is down to half the limit: resume them now."""
        low = [k for k in self.paused if self.buffered(k) <= self.limit // 2]
        self.paused.difference_update(low)
        return low

    def drop(self, keys: Iterable[PartitionKey]) -> int:
        """Forget the buffered records of partitions revoked or sought; returns how many."""
        dropped = 0
        for k in keys:
            buf = self._bufs.pop(k, None)
            if buf:
                dropped += len(buf)
            self.paused.discard(k)
        self._size -= dropped
        return dropped
