"""The grid tree over time: which parent each child hangs under at any instant.

Built from ``schemas.topology.TopologyLink`` records (the compacted ``grid.topology`` topic, or a
file). Records are applied top-down (feeder links before transformer links before meter links,
then by ``valid_from``), so a batch that brings a transformer and its meters together is accepted
whatever order the producer wrote it in. A record is refused, with a reason that becomes its
dead letter, when:

- its parent is unknown at ``valid_from`` (a substation is always known: it is the root);
- it closes a cycle (an id reused across levels can make one);
- it puts its child under two parents at once: another parent from the same instant, or a
  closed interval (``valid_to``) of another parent that overlaps it.

A later ``valid_from`` re-maps a child from then on; a resent record is accepted and changes
nothing. No I/O: the runtime feeds records in and reads ``parent_at``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from schemas.topology import LEVEL, TopologyLink

_OPEN = 2**62  # "until further notice"


@dataclass(frozen=True, slots=True)
class Link:
    from_ms: int
    to_ms: int  # exclusive; _OPEN when not given
    parent: str


class Topology:
    """Versioned parent of every child; ``version`` grows with every accepted change."""

    def __init__(self) -> None:
        self._links: dict[str, list[Link]] = {}
        self._kind: dict[str, str] = {}
        self.version = 0
        self.change_ms: list[int] = []  # sorted instants at which some mapping changes

    def __len__(self) -> int:
        return len(self._links)

    def kind_of(self, entity: str) -> str | None:
        return self._kind.get(entity)

    def parent_at(self, child: str, t_ms: int) -> str | None:
        """The parent of ``child`` at ``t_ms``, or None if it hangs under nothing then."""
        links = self._links.get(child)
        if not links:
            return None
        i = bisect_right([lk.from_ms for lk in links], t_ms) - 1
        if i < 0:
            return None
        link = links[i]
        return link.parent if t_ms < link.to_ms else None

    def changes_between(self, after_ms: int, until_ms: int) -> bool:
        """Does some mapping change in ``(after_ms, until_ms]``?"""
        return bisect_right(self.change_ms, until_ms) > bisect_right(self.change_ms, after_ms)

    def children(self, kind: str = "meter") -> list[str]:
        """Every child of ``kind`` ever mapped, in a stable order (first seen first)."""
        return [c for c, k in self._kind.items() if k == kind and c in self._links]

    def apply(self, links: list[tuple[int, TopologyLink]]) -> list[tuple[int, str, str]]:
        """Apply ``(index, link)`` records; ``(index, error_class, reason)`` for each refused."""
        order = sorted(links, key=lambda il: (-LEVEL[il[1].child_kind], il[1].from_ms, il[0]))
        refused = []
        for i, link in order:
            why = self._refusal(link)
            if why is None:
                self._accept(link)
            else:
                refused.append((i, *why))
        return sorted(refused)

    def _refusal(self, link: TopologyLink) -> tuple[str, str] | None:
        c, p, t = link.child_id, link.parent_id, link.from_ms
        for entity, kind in ((c, link.child_kind), (p, link.parent_kind)):
            known = self._kind.get(entity)
            if known is not None and known != kind:
                return "topology_cycle", f"{entity} is a {known}, not a {kind}: ids repeat levels"
        if link.parent_kind != "substation" and self.parent_at(p, t) is None:
            return "topology_unknown_parent", f"{link.parent_kind} {p} has no parent at {t} ms"
        up, seen = p, {p}
        while up is not None:
            if up == c:
                return "topology_cycle", f"{c} under {p} closes a cycle"
            up = self.parent_at(up, t)
            if up in seen:
                return "topology_cycle", f"the parents of {p} form a cycle"
            seen.add(up)
        end = link.to_ms if link.to_ms is not None else _OPEN
        for old in self._links.get(c, []):
            if old.parent == p:
                continue
            same = old.from_ms == t
            inside_old = old.to_ms != _OPEN and old.from_ms < t < old.to_ms
            inside_new = end != _OPEN and t < old.from_ms < end
            if same or inside_old or inside_new:
                return (
                    "topology_two_parents",
                    f"{c} would hang under {p} and {old.parent} at once "
                    f"from {max(t, old.from_ms)} ms",
                )
        return None

    def _accept(self, link: TopologyLink) -> None:
        c = link.child_id
        self._kind.setdefault(c, link.child_kind)
        self._kind.setdefault(link.parent_id, link.parent_kind)
        end = link.to_ms if link.to_ms is not None else _OPEN
        new = Link(link.from_ms, end, link.parent_id)
        links = [lk for lk in self._links.get(c, []) if lk.from_ms != new.from_ms]
        if new in self._links.get(c, []):
            return
        links.append(new)
        links.sort(key=lambda lk: lk.from_ms)
        self._links[c] = links
        for t in (new.from_ms, end) if end != _OPEN else (new.from_ms,):
            at = bisect_left(self.change_ms, t)
            if at == len(self.change_ms) or self.change_ms[at] != t:
                self.change_ms.insert(at, t)
        self.version += 1
