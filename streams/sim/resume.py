"""Where a restarted simulator resumes: after the newest reading already in the input topics.

``gridstream simulate --resume`` starts there, so a restart continues the stream instead of
producing its backfill again (every record of which would be a duplicate or out of order for the
processor, and a dead letter).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from schemas.readings import epoch_ms
from streams.sim.producer import SimulatorError


def newest_reading_ms(
    client_config: Mapping[str, object],
    topics: Sequence[str],
    *,
    tail: int = 2000,
    timeout_s: float = 30.0,
) -> int | None:
    """The newest ``ts`` (epoch ms) among the last ``tail`` records of every partition of
    ``topics``, or None when they hold no reading (or do not exist).

    Reading starts ``tail`` records below the high watermark and goes on to the end of each
    partition, so a broker whose watermark undercounts (the embedded one counts batches) only
    costs more reading.
    """
    consumer = Consumer(
        {
            **client_config,
            "group.id": f"gridstream-simulate-resume-{time.time_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        assignment = _tails(consumer, topics, tail, timeout_s)
        if not assignment:
            return None
        consumer.assign(assignment)
        return _read_to_end(consumer, assignment, timeout_s)
    finally:
        consumer.close()


def _tails(
    consumer: Consumer, topics: Sequence[str], tail: int, timeout_s: float
) -> list[TopicPartition]:
    """Every non-empty partition of ``topics``, positioned ``tail`` records before its end."""
    assignment: list[TopicPartition] = []
    for topic in topics:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            continue
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high <= low:
                continue
            start = max(low, high - tail) if high > 0 else OFFSET_BEGINNING
            assignment.append(TopicPartition(topic, partition, start))
    return assignment


def _read_to_end(
    consumer: Consumer, assignment: list[TopicPartition], timeout_s: float
) -> int | None:
    """The newest reading ``ts`` up to the end of every assigned partition."""
    newest: int | None = None
    open_parts = {(tp.topic, tp.partition) for tp in assignment}
    deadline = time.monotonic() + timeout_s
    while open_parts and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard((msg.topic(), msg.partition()))
                continue
            ts = _reading_ts(msg.value())
            if ts is not None and (newest is None or ts > newest):
                newest = ts
    if open_parts:
        raise SimulatorError(
            f"simulate --resume: could not read to the end of {sorted(open_parts)} "
            f"within {timeout_s:.0f} s"
        )
    return newest


def _reading_ts(value: bytes | None) -> int | None:
    """The ``ts`` of a reading in epoch ms (either contract form); None for anything else."""
    try:
        return epoch_ms(orjson.loads(value or b"").get("ts"))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None
