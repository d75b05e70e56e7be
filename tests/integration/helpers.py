"""Helpers for integration tests: real clients against the embedded broker."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from models.balance import BalanceCore, BalanceParams
from models.topology import Topology
from streams.sim.balance import BalanceSim, feed


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0


def read_all(
    bootstrap: str,
    topic: str,
    expect: int | None = None,
    idle_s: float = 3.0,
    timeout_s: float = 60.0,
) -> list[Message]:
    """Every record of a topic from the start, until ``expect`` are read or it stays idle."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    # assign, not subscribe: no group join, so reading starts at once
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, 0.5)
            good = [m for m in msgs if m.error() is None]
            out.extend(good)
            if good:
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if time.monotonic() - last > idle_s and (expect is None or not msgs):
                if expect is None or time.monotonic() - last > idle_s * 3:
                    break
    finally:
        consumer.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return [p.offset for p in parts]
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    """Next offset of every partition, from the records themselves (-1001 when empty).

    The embedded broker's ListOffsets answers a batch count for "latest", so watermarks cannot
    be trusted there; reading the topic can.
    """
    last = [-1] * partitions
    for m in read_all(bootstrap, topic, idle_s=1.5):
        last[m.partition()] = max(last[m.partition()], m.offset())
    return [off + 1 if off >= 0 else -1001 for off in last]


def headers(msg: Message) -> dict[str, bytes]:
    return dict(msg.headers() or [])


def offline_balance(
    sim: BalanceSim, days: int, lateness_s: int
) -> dict[tuple[str, int], tuple[float, float]]:
    """What the pure balance core computes from ``sim``'s whole run, keyed like the stored rows:
    ``(parent, interval start) -> (parent kWh, children kWh)``, rounded to 6 places."""
    topo = Topology()
    topo.apply(list(enumerate(sim.topology())))
    core = BalanceCore(BalanceParams(lateness_s=lateness_s), topo)
    rows = [r for i in range(days * 96) for r in feed(core, sim.interval(i)).rows]
    return {
        (p, r.interval_ms): (round(a, 6), round(b, 6))
        for r in rows
        for p, a, b in zip(r.parent_id, r.parent_kwh, r.children_kwh, strict=True)
    }
