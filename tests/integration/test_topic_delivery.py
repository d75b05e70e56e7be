"""``TopicSink`` on a real broker: a record the broker never acknowledges is produced again, then
reported with its topic; nothing is lost silently."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from sinks.encode import OutRecord
from sinks.topics import DeliveryError, TopicSink
from tests.integration.helpers import read_all

pytestmark = pytest.mark.integration


def test_undeliverable_records_are_retried_then_reported(bootstrap: str, unique: str) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "message.timeout.ms": 1500,
            "allow.auto.create.topics": False,
        }
    )
    sink = TopicSink(producer, retries=1, backoff_s=0.01, sleep=lambda _s: None)
    with pytest.raises(DeliveryError, match=f"topic 'missing-{unique}'"):
        sink.publish([(f"missing-{unique}", [OutRecord(b"k", b"v", [("h", b"1")])])])
    assert sink.redelivered == 1


def test_published_records_keep_key_value_and_headers(bootstrap: str, unique: str) -> None:
    sink = TopicSink(Producer({"bootstrap.servers": bootstrap}))
    records = [OutRecord(f"k{i}".encode(), f"v{i}".encode(), [("n", str(i).encode())])
               for i in range(50)]
    sink.publish([(f"out-{unique}", records)])
    got = sorted(read_all(bootstrap, f"out-{unique}", expect=50), key=lambda m: int(m.key()[1:]))
    assert [(m.key(), m.value(), m.headers()) for m in got] == [
        (r.key, r.value, r.headers) for r in records
    ]
