"""Throughput of 1 and 2 `gridstream run` processes in one consumer group on a 4-partition topic.

Two shapes are measured:
- ``chdb``: N separate ``gridstream run`` processes, each with its own embedded chDB directory
  (chDB holds a directory for one process, so ``--workers N`` refuses it; in production N
  workers write to one ClickHouse server instead);
- ``workers``: one ``gridstream run --workers N`` with ClickHouse off (``streams.runtime.workers``).

The readings are produced first; the rate is taken from the group's committed offsets between
30 % and 90 % of the input, which leaves out process start-up and the group join.
"""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.procs import runner_env, start_run, stop_run, topic_set, tree_rss_mb
from streams.config import KafkaSettings, Settings
from streams.runtime.runner import ensure_topics

PARTITIONS = 4


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000})
    for value in values:
        while True:
            try:
                producer.produce(topic, value, value[13:26])  # inside the meter id
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("scaling input not fully produced")


def _one(bootstrap: str, tmp: Path, values: list[bytes], n_proc: int, shape: str
         ) -> dict[str, float]:
    tag = f"scale-{shape}-{n_proc}-{time.time_ns()}"
    topics = topic_set(tag)
    ensure_topics(Settings(kafka=KafkaSettings(bootstrap_servers=bootstrap,
                                               partitions=PARTITIONS), topics=topics))
    _produce(bootstrap, topics.meter, values)
    group = f"{tag}-g"
    if shape == "chdb":
        procs = [start_run(runner_env(bootstrap, topics, group, tmp / f"{tag}-{i}", PARTITIONS))
                 for i in range(n_proc)]
    else:
        procs = [start_run(runner_env(bootstrap, topics, group, None, PARTITIONS),
                           ["--workers", str(n_proc)])]
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = [TopicPartition(topics.meter, p) for p in range(PARTITIONS)]
    n = len(values)
    marks: dict[float, float] = {}
    peak_rss = 0.0
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = sum(max(p.offset, 0) for p in watcher.committed(parts, 10))
            now = time.perf_counter()
            for frac in (0.3, 0.9):
                if frac not in marks and done >= frac * n:
                    marks[frac] = now
            peak_rss = max(peak_rss, sum(tree_rss_mb(p.pid) or 0.0 for p in procs))
            if done >= n:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"scaling: a runner exited early: {stop_run(procs[0])[1]}")
            time.sleep(0.2)
        else:
            raise RuntimeError("scaling: input not committed within 15 minutes")
    finally:
        watcher.close()
        statuses = [stop_run(p) for p in procs]
    bad = [f"status {status}: {tail}" for status, tail in statuses if status != 0]
    if bad:
        raise RuntimeError(f"scaling: a runner exited non-zero: {bad[0]}")
    return {"rps": round(0.6 * n / (marks[0.9] - marks[0.3])), "peak_rss_mb": round(peak_rss, 1)}


def measure(bootstrap: str, tmp: Path, values: list[bytes],
            shapes: tuple[str, ...] = ("chdb", "workers")) -> dict[str, object]:
    """Readings/s with 1 and 2 processes for each shape, and the 2-to-1 ratio."""
    out: dict[str, object] = {"partitions": PARTITIONS, "readings": len(values)}
    for shape in shapes:
        one = _one(bootstrap, tmp, values, 1, shape)
        two = _one(bootstrap, tmp, values, 2, shape)
        out[shape] = {"1": one, "2": two, "ratio_2_to_1": round(two["rps"] / one["rps"], 2)}
    return out
