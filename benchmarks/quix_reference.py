"""The idiomatic Quix Streams job of the peer reference, run by its own interpreter.

Imports nothing of gridstream (Quix Streams pins an older confluent-kafka, so it lives in a
separate virtualenv; see benchmarks/faust_reference.py): a StreamingDataFrame over the readings,
per-key ``State`` (RocksDB with a changelog topic) holding a rolling window, a rolling mean and
z-score, one output record per event. Prints one ``RESULT`` line of JSON.

Quix sizes a changelog topic from its source topic's ``retention.ms``, read with DescribeConfigs;
the embedded broker (Tansu) returns only configs set explicitly at creation, so against it Quix
stops with ``KeyError: 'retention.ms'``. The job therefore first copies the first ``n`` readings
(keys and partitions kept) into a topic created with ``retention.ms`` set; the copy is not timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any


def _copy_with_retention(bootstrap: str, topic: str, n: int) -> str:
    """Copy ``n`` records of ``topic`` into a new topic whose ``retention.ms`` is explicit."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    copy = f"{topic}.quix-src-{time.time_ns()}"
    new = NewTopic(copy, len(parts), 1, config={"retention.ms": "-1", "retention.bytes": "-1"})
    admin.create_topics([new])[copy].result(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"copy-{time.time_ns()}"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    copied = 0
    while copied < n:
        msgs = consumer.consume(min(10_000, n - copied), 5.0)
        if not msgs:
            raise RuntimeError(f"only {copied} of {n} records to copy")
        for m in msgs:
            while True:
                try:
                    producer.produce(copy, m.value(), m.key(), partition=m.partition())
                    break
                except BufferError:
                    producer.poll(0.05)
        copied += len(msgs)
    consumer.close()
    if producer.flush(120):
        raise RuntimeError("copy not fully produced")
    return copy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--window", type=int, default=96)
    args = ap.parse_args()

    from quixstreams import Application, State

    source = _copy_with_retention(args.bootstrap, args.topic, args.n)

    marks: dict[str, float] = {}
    seen = [0]
    window_len = args.window

    def score(doc: dict[str, Any], state: State) -> dict[str, Any]:
        if not seen[0]:
            marks["start"] = time.perf_counter()
        seen[0] += 1
        window = state.get("window", [])
        z = 0.0
        if len(window) >= 2:
            mean = sum(window) / len(window)
            var = sum((x - mean) ** 2 for x in window) / (len(window) - 1)
            z = (doc["kw"] - mean) / var**0.5 if var > 0 else 0.0
        window.append(doc["kw"])
        state.set("window", window[-window_len:])
        return {"meter_id": doc["meter_id"], "ts": doc["ts"], "z": z, "anomaly": abs(z) > 4.0}

    with tempfile.TemporaryDirectory() as tmp:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=f"quix-ref-{time.time_ns()}",
            auto_offset_reset="earliest",
            state_dir=tmp,
            consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        )
        readings = app.topic(source, value_deserializer="json", key_deserializer="bytes")
        out = app.topic(f"{args.topic}.quix-ref-out", value_serializer="json",
                        key_serializer="bytes")
        sdf = app.dataframe(readings)
        sdf = sdf.apply(score, stateful=True)
        sdf.to_topic(out)
        app.run(count=args.n, timeout=120.0)  # returns after n records are processed
        seconds = time.perf_counter() - marks["start"]
    doc = {"events": seen[0], "seconds": seconds, "rps": (seen[0] - 1) / seconds}
    print("RESULT " + json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
