"""The partition count each input topic's state was built with, and what a change does to it.

Per-partition state is only right while every entity's readings keep arriving in one partition.
Adding partitions to a topic remaps keys (``hash(key) % partitions``): an entity's new readings go
to another partition than its state, which would then warm up from nothing beside a stale copy,
and its order and duplicate checks would run on half a history, all without an error. So the
count is recorded (``<state_dir>/<group>/layout.json``, or in memory without a state directory)
and compared at every assignment. On a change, ``GRIDSTREAM_PROCESSING__ON_PARTITION_CHANGE``:

- ``refuse`` (default): stop with ``PartitionCountChanged``, naming the topic, both counts and the
  way on; nothing of the new layout is processed and no checkpoint is touched.
- ``reset``: the operator accepts the loss: the state of that topic's partitions is discarded
  (checkpoints deleted, held tasks replaced), every entity warms up again, counted as
  ``partition_layout_resets`` and logged as a warning. It cannot be rebuilt by replay: an
  entity's history now lies in two partitions, which no per-partition replay joins.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from schemas.exceptions import GridstreamError

log = logging.getLogger("gridstream.layout")


class PartitionCountChanged(GridstreamError):
    """An input topic has another partition count than its state was built with."""


class PartitionLayout:
    """Known partition counts per input topic; ``check`` applies the change policy."""

    def __init__(self, directory: Path | None, policy: str = "refuse") -> None:
        self.path = Path(directory) / "layout.json" if directory is not None else None
        self.policy = policy
        self.known: dict[str, int] = self._read()

    def _read(self) -> dict[str, int]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads(self.path.read_text()).items()}
        except (ValueError, AttributeError, OSError) as exc:
            raise PartitionCountChanged(
                f"{self.path}: unreadable partition layout ({exc}); restore or delete it"
            ) from None

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".layout.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.known, sort_keys=True))
        tmp.replace(self.path)

    def check(self, counts: dict[str, int]) -> list[str]:
        """Record new topics; return the topics whose state must be reset (policy ``reset``),
        or raise ``PartitionCountChanged`` (policy ``refuse``)."""
        reset, changed = [], False
        for topic, count in sorted(counts.items()):
            was = self.known.get(topic)
            if was == count:
                continue
            if was is not None and self.policy == "refuse":
                raise PartitionCountChanged(
                    f"topic {topic} has {count} partitions, but its state was built with {was}: "
                    "keys now map to other partitions, so continuing would split entities' state "
                    "without a word. Nothing was processed with the new layout. To go on and let "
                    "every entity of the topic warm up again, set "
                    "GRIDSTREAM_PROCESSING__ON_PARTITION_CHANGE=reset"
                    + (f" (layout recorded in {self.path})" if self.path else "")
                )
            if was is not None:
                log.warning(
                    "topic %s: %d partitions, state built with %d; discarding its state "
                    "(on_partition_change=reset), entities warm up again", topic, count, was,
                )
                reset.append(topic)
            self.known[topic] = count
            changed = True
        if changed:
            self._write()
        return reset
