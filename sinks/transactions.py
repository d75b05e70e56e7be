"""Exactly-once publishing: a batch's outputs and its input offsets in one Kafka transaction.

Consumers reading the output topics with ``isolation.level=read_committed`` see a batch's
forecasts, anomalies and dead letters if and only if its input offsets were committed, so a
crash anywhere in the batch leaves neither (the transaction is aborted when the next instance
with the same ``transactional.id`` starts, or when it times out) and the batch is processed again.
The consumer-group metadata sent with the offsets lets the broker fence a zombie that lost its
partitions in a rebalance (KIP-447); a fenced producer is fatal: the process must stop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from sinks.encode import OutRecord
from sinks.exceptions import SinkError


class TransactionAborted(SinkError):
    """The transaction failed in a way that allows a retry; it was aborted, nothing is visible."""

    retryable = True


class ProducerFenced(SinkError):
    """Another instance owns the transactional id (or the producer hit a fatal error)."""

    retryable = False


class TransactionalTopics:
    """One transactional producer; ``publish`` runs one whole transaction per batch."""

    def __init__(self, producer: Producer, timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.timeout_s = timeout_s
        self.produced: dict[str, int] = {}
        self.aborted = 0
        self._initialised = False
        self._needs_abort = False

    def _init(self) -> None:
        if not self._initialised:
            # Fences an older instance with the same id and aborts its open transaction.
            self.producer.init_transactions(self.timeout_s)
            self._initialised = True
        if self._needs_abort:  # an earlier abort timed out: finish it before a new begin
            self.producer.abort_transaction(self.timeout_s)
            self._needs_abort = False
            self.aborted += 1

    def publish(
        self,
        outputs: Sequence[tuple[str, Sequence[OutRecord]]],
        offsets: list[TopicPartition],
        group_metadata: object,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Produce every record and commit ``offsets`` atomically with them, or raise."""
        try:
            self._init()
            self.producer.begin_transaction()
            produce, poll = self.producer.produce, self.producer.poll
            for topic, records in outputs:
                for i, rec in enumerate(records):
                    while True:
                        try:
                            produce(topic, rec.value, rec.key, headers=rec.headers)
                            break
                        except BufferError:
                            poll(0.05)
                    if i % 10_000 == 9_999:
                        poll(0)
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, group_metadata, self.timeout_s)
            # every record acknowledged before the commit (which would flush them anyway), so a
            # crash at ``before_commit`` leaves them in the log, to be aborted by the next life
            self.producer.flush(self.timeout_s)
            if before_commit is not None:
                before_commit()
            self.producer.commit_transaction(self.timeout_s)  # flushes; fails if any send failed
        except KafkaException as exc:
            self._fail(exc)
        for topic, records in outputs:
            self.produced[topic] = self.produced.get(topic, 0) + len(records)

    def _fail(self, exc: KafkaException) -> None:
        err: KafkaError = exc.args[0]
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            raise ProducerFenced(f"transactional producer cannot continue: {err.str()}") from exc
        if not self._initialised:
            raise TransactionAborted(f"init_transactions failed, will retry: {err.str()}") from exc
        try:
            self.producer.abort_transaction(self.timeout_s)
            self.aborted += 1
        except KafkaException as abort_exc:
            abort_err: KafkaError = abort_exc.args[0]
            if abort_err.fatal():
                raise ProducerFenced(f"abort failed: {abort_err.str()}") from abort_exc
            self._needs_abort = True  # the coordinator is unreachable: abort before next try
        raise TransactionAborted(f"transaction aborted, will retry: {err.str()}") from exc
