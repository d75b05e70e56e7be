"""Which partition a keyed record lands on: the rule of the producers gridstream configures.

Producers use librdkafka's ``murmur2_random`` partitioner, which for a non-empty key is the Java
client's default (``BuiltInPartitioner.partitionForKey``), so keyed outputs are co-partitioned
with what Java and Kafka Streams consumers expect. A stage that must know which keys a partition
holds (the energy balance's internal topic) asks this module, never a hash of its own.

>>> java_partition(b"feeder-7", 12) == java_partition(b"feeder-7", 12) < 12
True
"""

from __future__ import annotations

import zlib

PARTITIONER = "murmur2_random"  # librdkafka's name for the rule below


def murmur2(data: bytes) -> int:
    """``org.apache.kafka.common.utils.Utils.murmur2``, in 32-bit signed Java arithmetic."""
    m, r = 0x5BD1E995, 24
    mask = 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    n4 = len(data) // 4
    for i in range(n4):
        k = int.from_bytes(data[i * 4 : i * 4 + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[n4 * 4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    """``BuiltInPartitioner.partitionForKey``: toPositive(murmur2(key)) % partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_for(key: bytes, partitions: int, partitioner: str = PARTITIONER) -> int:
    """The partition librdkafka's ``partitioner`` puts a non-empty ``key`` on.

    Only the deterministic partitioners have an answer: murmur2 (Java's) and consistent (CRC32);
    ``*_random`` differ from them only for empty keys."""
    if partitioner in ("murmur2", "murmur2_random"):
        return java_partition(key, partitions)
    if partitioner in ("consistent", "consistent_random"):
        return zlib.crc32(key) % partitions
    raise ValueError(
        f"partitioner {partitioner!r} does not place keys deterministically; "
        "the energy balance needs murmur2_random or consistent_random"
    )
