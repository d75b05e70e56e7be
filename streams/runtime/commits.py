"""Offset commits that a broker outage does not turn into a crash."""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger("gridstream.runner")

# Commit errors that mean "not now": the group coordinator or the broker is unreachable.
_RETRY_COMMIT = frozenset(
    {
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
    }
)


def commit_or_defer(consumer: Consumer, offsets: list[TopicPartition]) -> KafkaError | None:
    """Commit, or leave it to the next batch when the broker cannot take it now (the error is
    returned, to be counted).

    Commits are cumulative: the next successful one covers these offsets, and until then a
    restart replays the batch, which every output absorbs. A broker that went away (no
    coordinator, transport down) must not end the processor; a fatal error still does.
    """
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None or err.fatal() or not (err.retriable() or err.code() in _RETRY_COMMIT):
            raise
        log.warning("offset commit failed, left to the next batch: %s", err.str())
        return err
    return None
