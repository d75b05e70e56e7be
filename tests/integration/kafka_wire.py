"""Transaction outcomes read off a partition's log, at the Kafka protocol level.

The embedded broker writes transaction markers (control batches) but does not return the list of
aborted transactions in its Fetch responses, which is what librdkafka's ``read_committed`` uses to
skip aborted records; so on this broker a read_committed consumer still sees them. To check the
exactly-once guarantee anyway, this module fetches the raw record batches (Fetch v4, record batch
format v2) and pairs each transactional batch with the marker its producer wrote next: commit,
abort, or none yet (open). A consumer on a complete broker would skip exactly the aborted ones.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

TRANSACTIONAL = 0x10
CONTROL = 0x20


@dataclass(frozen=True, slots=True)
class TxnRange:
    first: int
    last: int
    outcome: str  # committed | aborted | open | plain (not transactional)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take(">h")
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return (result >> 1) ^ -(result & 1)  # zigzag
            shift += 7


def _fetch(sock: socket.socket, topic: str, partition: int, offset: int, corr: int) -> bytes:
    t = topic.encode()
    body = struct.pack(">iiiib", -1, 200, 0, 64 << 20, 0)  # read_uncommitted: every batch
    body += struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, 32 << 20)
    header = struct.pack(">hhi", 1, 4, corr) + struct.pack(">h", 4) + b"test"
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv(sock, 4))[0]
    return _recv(sock, size)


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _batches(resp: bytes) -> list[tuple[int, int, int, int, int | None]]:
    """(first, last, attributes, producer id, control type) of each complete batch."""
    r = _Reader(resp)
    r.take(">i")  # correlation id
    r.take(">i")  # throttle
    out = []
    for _ in range(r.take(">i")):
        r.string()
        for _ in range(r.take(">i")):
            r.take(">i")
            err = r.take(">h")
            if err:
                raise RuntimeError(f"fetch error code {err}")
            r.take(">q")
            r.take(">q")
            for _ in range(max(0, r.take(">i"))):  # aborted transactions: empty on this broker
                r.take(">q")
                r.take(">q")
            size = r.take(">i")
            end = r.pos + max(0, size)
            while end - r.pos >= 12:
                base = r.take(">q")
                length = r.take(">i")
                if r.pos + length > end:
                    break  # a partial batch at the end of the response
                b = _Reader(r.data[r.pos : r.pos + length])
                r.pos += length
                b.take(">i")  # leader epoch
                b.take(">b")  # magic
                b.take(">I")  # crc
                attrs = b.take(">h")
                last_delta = b.take(">i")
                b.take(">q")
                b.take(">q")
                pid = b.take(">q")
                b.take(">h")
                b.take(">i")
                count = b.take(">i")
                control = None
                if attrs & CONTROL and count:
                    b.varint()  # record length
                    b.take(">b")
                    b.varint()
                    b.varint()
                    b.varint()  # key length
                    b.take(">h")  # control key version
                    control = b.take(">h")  # 0 abort, 1 commit
                out.append((base, base + last_delta, attrs, pid, control))
    return out


def transaction_outcomes(bootstrap: str, topic: str, partition: int) -> list[TxnRange]:
    """Every data batch of the partition with the outcome of its transaction."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    ranges: list[TxnRange] = []
    pending: dict[int, list[tuple[int, int]]] = {}
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        offset, corr = 0, 0
        while True:
            corr += 1
            batches = _batches(_fetch(sock, topic, partition, offset, corr))
            if not batches:
                break
            for first, last, attrs, pid, control in batches:
                if attrs & CONTROL:
                    outcome = {0: "aborted", 1: "committed"}.get(control or 0, "aborted")
                    ranges.extend(TxnRange(a, b, outcome) for a, b in pending.pop(pid, []))
                elif attrs & TRANSACTIONAL:
                    pending.setdefault(pid, []).append((first, last))
                else:
                    ranges.append(TxnRange(first, last, "plain"))
                offset = last + 1
    ranges.extend(TxnRange(a, b, "open") for spans in pending.values() for a, b in spans)
    return sorted(ranges, key=lambda r: r.first)


def aborted_offsets(bootstrap: str, topic: str, partitions: int) -> set[tuple[int, int]]:
    """(partition, offset) of every record in an aborted transaction."""
    out: set[tuple[int, int]] = set()
    for p in range(partitions):
        for r in transaction_outcomes(bootstrap, topic, p):
            if r.outcome == "aborted":
                out.update((p, o) for o in range(r.first, r.last + 1))
    return out
