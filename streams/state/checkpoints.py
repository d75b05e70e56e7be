"""Task checkpoints in a directory: a partition's whole core state and the offset it reflects.

A checkpoint is written only at a committed position (after the batch's outputs were
acknowledged and its offsets committed), so its ``position`` is never ahead of the group's
committed offset. On assignment the runner restores the newest state that is not ahead of the
committed offset and replays the readings between the two without publishing, which rebuilds the
exact state the partition had, whichever worker held it before.

Several workers, or a restarted one, find each other's checkpoints when they share the directory
(a volume shared by the replicas, like Flink's checkpoint directory). Files are written to a
temporary name (``.<name>.<host>.<pid>.tmp``), fsynced and renamed, and carry the sha256 of
their payload, so a crash mid-write leaves the previous checkpoint in place and a torn or edited
file is refused, not unpickled. A temporary file left by a killed writer is removed when a worker
starts (``remove_orphans``): at once if its writer ran on this host and is gone, otherwise once
it is older than any write could take (``ORPHAN_AFTER_S``): another host's writer may be alive.

Layout: one JSON header line, then the payload: named sections end to end (``sections`` in the
header gives their names and sizes): ``processor`` (the core's state, ``models.snapshot``: an
``.npz`` of arrays with typed JSON metadata) and ``accuracy`` (the forecasts waiting for their
actuals, an ``.npz`` of plain arrays). Nothing in a checkpoint is unpickled: format 1 and 2 files
(whose core state was a pickle) and snapshots this version cannot restore exactly (other state
columns or river version) raise ``CheckpointFormatError``, and the partition is rebuilt by
replaying its log.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.processor import GridProcessor
from models.snapshot import SnapshotError
from streams.ops.accuracy import ForecastAccuracy
from streams.state.tasks import TaskId

FORMAT = 3  # 1, 2: core state pickled (refused); 3: core state as arrays + JSON
ORPHAN_AFTER_S = 600.0  # a temp file this old is no write in progress, whoever made it


class CheckpointError(Exception):
    """A checkpoint file exists but cannot be used (torn, tampered, other format)."""


class CheckpointFormatError(CheckpointError):
    """An intact checkpoint of another format or version: expected after an upgrade."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: int
    processor: GridProcessor
    created_ms: int
    nbytes: int
    accuracy: ForecastAccuracy | None = None


class CheckpointStore:
    """``<root>/<group>/<topic>.<partition>.ckpt``: one current checkpoint per partition."""

    def __init__(self, root: Path, group: str) -> None:
        self.dir = Path(root) / group
        self.dir.mkdir(parents=True, exist_ok=True)
        self._host = socket.gethostname().replace("/", "_") or "host"

    def remove_orphans(self, now_s: float | None = None) -> list[Path]:
        """Delete temp files of checkpoint writes that can no longer finish; returns them."""
        now_s = time.time() if now_s is None else now_s
        removed = []
        for path in self.dir.glob(".*.ckpt.*.tmp"):
            try:
                age_s = now_s - path.stat().st_mtime
            except FileNotFoundError:
                continue  # renamed or removed by its writer meanwhile
            if age_s < ORPHAN_AFTER_S and not self._writer_gone(path.name):
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed

    def _writer_gone(self, name: str) -> bool:
        """True if the temp file's writer ran on this host and no longer runs."""
        stem, _, pid = name.removesuffix(".tmp").rpartition(".")
        if not stem.endswith(f".{self._host}") or not pid.isdigit():
            return False  # another host's (or an older naming's) writer: only age tells
        if int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, someone else's
        return False

    def path(self, tid: TaskId) -> Path:
        topic, partition = tid
        return self.dir / f"{topic}.{partition}.ckpt"

    def save(
        self,
        tid: TaskId,
        position: int,
        processor: GridProcessor,
        accuracy: ForecastAccuracy | None = None,
    ) -> int:
        """Write the task's state at ``position`` atomically; returns the bytes written."""
        sections = {"processor": processor.snapshot()}
        if accuracy is not None:
            buf = io.BytesIO()
            np.savez(buf, **accuracy.snapshot())
            sections["accuracy"] = buf.getvalue()
        blob = b"".join(sections.values())
        header = {
            "format": FORMAT,
            "topic": tid[0],
            "partition": tid[1],
            "position": position,
            "created_ms": int(time.time() * 1000),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "sections": [[name, len(data)] for name, data in sections.items()],
        }
        final = self.path(tid)
        tmp = final.with_name(f".{final.name}.{self._host}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(json.dumps(header).encode() + b"\n")
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        return len(blob)

    def load(self, tid: TaskId) -> Checkpoint | None:
        """The partition's checkpoint, None if there is none; CheckpointError if unusable."""
        path = self.path(tid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        line, sep, blob = data.partition(b"\n")
        try:
            header = json.loads(line) if sep else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or not isinstance(header.get("format"), int):
            raise CheckpointError(f"{path}: not a gridstream checkpoint")
        if header["format"] != FORMAT:
            raise CheckpointFormatError(
                f"{path}: checkpoint format {header['format']}, this version reads {FORMAT}; "
                "not loading it"
            )
        if (header.get("topic"), header.get("partition")) != tuple(tid):
            raise CheckpointError(
                f"{path}: holds {header.get('topic')}/{header.get('partition')}, "
                f"not {tid[0]}/{tid[1]}"
            )
        if len(blob) != header.get("bytes") or hashlib.sha256(blob).hexdigest() != header.get(
            "sha256"
        ):
            raise CheckpointError(
                f"{path}: payload is {len(blob)} bytes and does not match its sha256 "
                "(torn or modified); not loading it"
            )
        sections = _split(blob, header.get("sections"))
        if sections is None or "processor" not in sections:
            raise CheckpointError(f"{path}: sections do not add up to the payload")
        try:
            processor = GridProcessor.from_snapshot(sections["processor"])
        except SnapshotError as exc:
            raise CheckpointFormatError(f"{path}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad checkpoint
            raise CheckpointError(f"{path}: cannot restore the state: {exc}") from exc
        try:
            accuracy = None
            if "accuracy" in sections:
                with np.load(io.BytesIO(sections["accuracy"]), allow_pickle=False) as npz:
                    accuracy = ForecastAccuracy.restore({k: npz[k] for k in npz.files})
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad checkpoint
            raise CheckpointError(f"{path}: cannot restore the state: {exc}") from exc
        return Checkpoint(
            position=int(header["position"]),
            processor=processor,
            created_ms=int(header.get("created_ms", 0)),
            nbytes=len(blob),
            accuracy=accuracy,
        )


def _split(blob: bytes, spec: object) -> dict[str, bytes] | None:
    """The named sections of a payload, None if ``spec`` does not describe it exactly."""
    if not isinstance(spec, list):
        return None
    out: dict[str, bytes] = {}
    at = 0
    for item in spec:
        if not (isinstance(item, list) and len(item) == 2):
            return None
        name, size = item
        if not isinstance(name, str) or not isinstance(size, int) or size < 0:
            return None
        out[name] = blob[at : at + size]
        at += size
    return out if at == len(blob) else None
