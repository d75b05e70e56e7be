"""The grid topology as a global table: every worker reads the whole compacted topic.

``grid.topology`` is keyed by child id and compacted, so it holds each child's newest mapping and
stays small (one record per meter). Like a Kafka Streams GlobalKTable, every worker assigns itself
all of its partitions from the beginning (no consumer group, nothing committed) and applies what
arrives to one ``models.topology.Topology``; a record it refuses becomes a dead letter with the
reason. ``catch_up`` reads to the end before the balance starts, so the first intervals are
balanced against the whole tree. For backtests, ``load_file`` reads the same records from a file
(one JSON object per line).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from models.topology import Topology
from schemas.batch import DeadLetterRecord, Rejection
from schemas.topology import decode_topology
from streams.config import Settings


def apply_records(topology: Topology, values: list[bytes | None]) -> list[Rejection]:
    """Decode and apply topology records; one ``Rejection`` per refused record, by index."""
    links, rejected = decode_topology(values)
    refused = topology.apply(links)
    rejected += [Rejection(i, cls, reason) for i, cls, reason in refused]
    return sorted(rejected, key=lambda r: r.src_index)


def load_file(path: Path, topology: Topology | None = None) -> tuple[Topology, list[Rejection]]:
    """A topology from a JSON-lines file (a backtest's ``grid.topology``); refusals by line."""
    topology = topology or Topology()
    lines = [line.encode() for line in path.read_text(encoding="utf-8").splitlines()]
    return topology, apply_records(topology, [v for v in lines if v.strip()])


class TopologyFeed:
    """Reads ``balance.topology_topic`` whole into ``topology``; refusals as dead letters."""

    def __init__(self, settings: Settings, topology: Topology | None = None) -> None:
        self.settings = settings
        self.topic = settings.balance.topology_topic
        self.topology = topology or Topology()
        self._consumer: Consumer | None = None
        self.applied = 0

    def _open(self) -> Consumer:
        if self._consumer is None:
            conf = {
                **self.settings.kafka.client_config(),
                "group.id": f"gridstream-topology-{uuid.uuid4().hex[:8]}",  # never joins
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
            consumer = Consumer(conf)
            meta = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            parts = sorted(meta.partitions) if meta is not None and not meta.error else []
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            self._consumer = consumer
        return self._consumer

    def poll(self, timeout_s: float = 0.0, max_records: int = 10_000) -> list[DeadLetterRecord]:
        """Apply what has arrived; the dead letters of the records refused."""
        msgs = [m for m in self._open().consume(max_records, timeout_s) if m.error() is None]
        if not msgs:
            return []
        rejected = apply_records(self.topology, [m.value() for m in msgs])
        self.applied += len(msgs) - len(rejected)
        now_ms = int(time.time() * 1000)
        return [_dead_letter(msgs[r.src_index], r, now_ms) for r in rejected]

    def catch_up(self, timeout_s: float = 30.0, quiet_s: float = 1.0) -> list[DeadLetterRecord]:
        """Read until nothing arrives for ``quiet_s`` (or ``timeout_s``); dead letters of the
        refusals. Quiet, not high watermarks: the embedded broker's watermarks count batches."""
        deadline = time.monotonic() + timeout_s
        dead: list[DeadLetterRecord] = []
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            before = self.applied
            got = self.poll(0.2)
            dead += got
            if got or self.applied != before:
                quiet_since = time.monotonic()
        return dead

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _dead_letter(msg: Message, rejection: Rejection, now_ms: int) -> DeadLetterRecord:
    return DeadLetterRecord(
        source_topic=msg.topic() or "",
        source_partition=msg.partition() or 0,
        source_offset=msg.offset() or 0,
        key=msg.key(),
        raw=msg.value() or b"",
        error_class=rejection.error_class,
        error=rejection.error,
        dead_lettered_ms=now_ms,
    )
