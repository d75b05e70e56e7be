"""Publish a batch's output records to Kafka topics and wait until every one is acknowledged.

The runtime commits input offsets only after ``publish`` returns, so a record that librdkafka
could not deliver (after its own retries) is produced again here; if it still fails the batch
fails and nothing is committed (at-least-once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sinks.encode import OutRecord
from sinks.exceptions import SinkError


class DeliveryError(SinkError):
    """Some records were not acknowledged by the broker after every retry."""

    retryable = True


class TopicSink:
    """Produces records with the entity id as key, retries failed deliveries, counts them."""

    def __init__(
        self,
        producer: Producer,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        flush_timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.producer = producer
        self.retries = retries
        self.backoff_s = backoff_s
        self.flush_timeout_s = flush_timeout_s
        self.sleep = sleep
        self.produced: dict[str, int] = {}
        self.redelivered = 0
        self._failed: list[tuple[str, OutRecord, KafkaError]] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # One bound method for every record (a closure per record cost an allocation each); a
        # failed record is rebuilt from the message, which carries topic, key, value, headers.
        if err is not None:
            rec = OutRecord(msg.key(), msg.value() or b"", list(msg.headers() or []))
            self._failed.append((msg.topic() or "", rec, err))

    def _produce(self, topic: str, records: Sequence[OutRecord]) -> None:
        produce = self.producer.produce
        poll = self.producer.poll
        cb = self._on_delivery
        for i, rec in enumerate(records):
            while True:
                try:
                    produce(topic, rec.value, rec.key, headers=rec.headers, on_delivery=cb)
                    break
                except BufferError:
                    poll(0.05)  # local queue full: serve delivery reports, then retry
            if i % 10_000 == 9_999:
                poll(0)
        self.produced[topic] = self.produced.get(topic, 0) + len(records)

    def publish(self, outputs: Sequence[tuple[str, Sequence[OutRecord]]]) -> None:
        """Produce every (topic, records) pair and block until all are acknowledged."""
        self._failed = []
        for topic, records in outputs:
            if records:
                self._produce(topic, records)
        for attempt in range(self.retries + 1):
            remaining = self.producer.flush(self.flush_timeout_s)
            if remaining:
                raise DeliveryError(
                    f"{remaining} records still unacknowledged after {self.flush_timeout_s:.0f} s "
                    "(broker unreachable?)"
                )
            if not self._failed:
                return
            failed, self._failed = self._failed, []
            if attempt == self.retries:
                topic, _, err = failed[0]
                raise DeliveryError(
                    f"{len(failed)} records not delivered after {self.retries} retries; "
                    f"first: topic {topic!r}: {err.str()}"
                )
            self.sleep(self.backoff_s * 2**attempt)
            self.redelivered += len(failed)
            for topic, rec, _ in failed:
                self._produce(topic, [rec])


def check_fatal(err: KafkaError) -> None:
    """Raise for errors a client cannot recover from (fenced producer, auth, fatal flags)."""
    if err.fatal():
        raise KafkaException(err)
