"""Topology contract: which parent aggregates each meter, transformer and feeder, and since when.

One record per (child, validity start) on the compacted topic ``grid.topology`` (key = child id,
so compaction keeps each child's newest mapping) or one JSON object per line in a file for
backtests. The levels are fixed: meter -> transformer -> feeder -> substation; a record that
skips or reverses a level is refused here, the rules that need the whole table (cycles, unknown
parents, two parents at once) are ``models.topology``'s.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from schemas.batch import Rejection
from schemas.readings import EPOCH, EntityId, Timestamp

ChildKind = Literal["meter", "transformer", "feeder"]
ParentKind = Literal["transformer", "feeder", "substation"]
PARENT_KIND: dict[str, str] = {
    "meter": "transformer",
    "transformer": "feeder",
    "feeder": "substation",
}
_MS = timedelta(milliseconds=1)
LEVEL: dict[str, int] = {"meter": 0, "transformer": 1, "feeder": 2, "substation": 3}


class TopologyLink(BaseModel):
    """One edge of the grid tree: ``child_id`` hangs under ``parent_id`` from ``valid_from`` on
    (until ``valid_to``, exclusive, if given). A later ``valid_from`` for the same child
    re-maps it from then on."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="TopologyLink")

    child_id: EntityId
    child_kind: ChildKind
    parent_id: EntityId
    parent_kind: ParentKind
    valid_from: Timestamp
    valid_to: Timestamp | None = None

    @model_validator(mode="after")
    def _levels(self) -> TopologyLink:
        want = PARENT_KIND[self.child_kind]
        if self.parent_kind != want:
            raise ValueError(f"a {self.child_kind} hangs under a {want}, not a {self.parent_kind}")
        if self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        return self

    @property
    def from_ms(self) -> int:
        return (self.valid_from - EPOCH) // _MS

    @property
    def to_ms(self) -> int | None:
        return None if self.valid_to is None else (self.valid_to - EPOCH) // _MS


def decode_topology(
    values: list[bytes | None],
) -> tuple[list[tuple[int, TopologyLink]], list[Rejection]]:
    """Parse topology records: ``(index, link)`` for the valid ones, a ``Rejection`` (dead letter)
    naming the field for every other; a tombstone (None) is a rejection too, since a child is
    retired with ``valid_to``, not by deleting its history."""
    links: list[tuple[int, TopologyLink]] = []
    rejections: list[Rejection] = []
    for i, raw in enumerate(values):
        if raw is None:
            rejections.append(Rejection(i, "topology_tombstone", "retire a child with valid_to"))
            continue
        try:
            links.append((i, TopologyLink.model_validate(orjson.loads(raw))))
        except orjson.JSONDecodeError as exc:
            rejections.append(Rejection(i, "malformed_json", f"topology record: {exc}"))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "record"
            rejections.append(Rejection(i, "topology_invalid", f"{where}: {err['msg']}"))
    return links, rejections
