"""The promotion rule and hot reload of model sets (see ``models.artifacts`` for the store).

A new set replaces the current one only if it verifies and its validation error is strictly
lower; every decision is appended to ``promotions.jsonl``. The watcher lets the runtime pick up a
promoted set between batches without a restart, keeping the previous set if the new one fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from models.artifacts import (
    CURRENT,
    PROMOTIONS,
    VALIDATION_ERROR,
    CurrentPointer,
    LoadedModelSet,
    Manifest,
    _atomic_write,
    _errors,
    load_model_set,
    verify_model_set,
)
from models.exceptions import ArtifactError, ManifestError, ModelError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: promotions there must not run concurrently
    fcntl = None  # type: ignore[assignment]


# -- promotion --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromotionDecision:
    """One application of the promotion rule, as appended to ``promotions.jsonl``."""

    promoted: bool
    reason: str
    candidate: str  # directory name in the store
    current: str | None  # the set that was current when the rule was applied
    candidate_error: float | None  # None: the candidate did not verify
    current_error: float | None  # None: no current set, or it did not verify
    decided_at: datetime

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "decided_at": self.decided_at.isoformat().replace("+00:00", "Z")}


def read_current(store: Path | str) -> CurrentPointer | None:
    """The promoted set's pointer, or None before the first promotion."""
    path = Path(store) / CURRENT
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return CurrentPointer.model_validate_json(raw)
    except ValidationError as exc:
        raise ManifestError(f"{path}: invalid pointer: {_errors(exc)}") from None


def promote_if_better(
    store: Path | str, candidate: Path | str, *, force: bool = False, now: datetime | None = None
) -> PromotionDecision:
    """Make ``candidate`` current if it verifies, loads, and beats the current set.

    The rule: promote iff the candidate verifies and deserialises cleanly AND (there is no
    current set, OR the current set no longer verifies, OR candidate ``validation_error`` <
    current ``validation_error``, strictly). Equal is not better: no churn. ``force`` (an
    operator's rollback) skips the comparison, never the verification. Decisions are serialised
    by a lock on the store and every one is appended to ``promotions.jsonl``.
    """
    store = Path(store)
    cand = Path(candidate)
    if cand.parent != Path() and cand.resolve().parent != store.resolve():
        raise ArtifactError(f"candidate {cand} is not a directory of the store {store}")
    at = now or datetime.now(UTC)
    with _store_lock(store):
        decision, manifest = _decide(store, cand.name, force, at)
        if decision.promoted and manifest is not None:
            pointer = CurrentPointer(
                format=1,
                dir=cand.name,
                ref=f"{manifest.name}@{manifest.version}",
                validation_error=manifest.metrics[VALIDATION_ERROR],
                promoted_at=at,
            )
            _atomic_write(store / CURRENT, pointer.model_dump_json(indent=2).encode())
        with open(store / PROMOTIONS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(decision.as_json(), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return decision


def _decide(
    store: Path, cand: str, force: bool, at: datetime
) -> tuple[PromotionDecision, Manifest | None]:
    cur: str | None = None
    cur_error: float | None = None
    cur_problem: str | None = None
    try:
        pointer = read_current(store)
        if pointer is not None:
            cur = pointer.dir
            cur_error = verify_model_set(store / cur).metrics[VALIDATION_ERROR]
    except ModelError as exc:
        cur_problem = str(exc)

    def decision(promoted: bool, reason: str, err: float | None) -> PromotionDecision:
        return PromotionDecision(promoted, reason, cand, cur, err, cur_error, at)

    try:
        loaded = load_model_set(store / cand)
    except ModelError as exc:
        return decision(False, f"candidate failed verification: {exc}", None), None
    err = loaded.validation_error
    if cur == cand and cur_problem is None:
        return decision(False, "candidate is already the current set", err), None
    if force:
        reason = "forced by the operator (comparison skipped, verification passed)"
    elif cur_problem is not None:
        reason = f"current set unusable ({cur_problem}); verified candidate promoted"
    elif cur is None or cur_error is None:
        reason = "no current set; first verified set promoted"
    elif err < cur_error:
        reason = f"validation_error {err:.6g} < current {cur_error:.6g} of {cur}; promoted"
    else:
        reason = f"validation_error {err:.6g} is not lower than {cur_error:.6g} of {cur}; kept"
        return decision(False, reason, err), None
    return decision(True, reason, err), loaded.manifest


@contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    if not store.is_dir():
        raise ArtifactError(f"model store {store} does not exist")
    with open(store / ".lock", "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        yield


# -- hot reload -------------------------------------------------------------------------------
class ModelStoreWatcher:
    """Adopts a newly promoted set between batches, verified, without a restart.

    ``poll()`` costs one ``stat`` while ``current.json`` is unchanged. A promoted set that fails
    verification, deserialisation or ``expected_features`` is not adopted: the previous set stays
    in use and ``last_error`` says why (health reports degraded). A refused pointer is not
    retried on every poll (hashing a set is not free); a new promotion, or touching
    ``current.json``, retries. No threads: the runtime calls ``poll`` when it suits it.
    """

    def __init__(self, store: Path | str, expected_features: Sequence[str] | None = None) -> None:
        self.store = Path(store)
        self.expected_features = None if expected_features is None else tuple(expected_features)
        self.current: LoadedModelSet | None = None
        self.last_error: str | None = None
        self._seen: tuple[int, int, int] | None = None

    def poll(self) -> LoadedModelSet | None:
        """The newly adopted set, or None when nothing changed or the new set was refused."""
        try:
            st = os.stat(self.store / CURRENT)
        except FileNotFoundError:
            self._seen = None  # nothing promoted (yet): keep whatever is in use
            return None
        except OSError as exc:
            self.last_error = f"cannot stat {self.store / CURRENT}: {exc}"
            return None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            pointer = read_current(self.store)
            if pointer is None:
                return None
            if self.current is not None and pointer.dir == self.current.path.name:
                self.last_error = None  # pointed back at the set in use
                return None
            loaded = load_model_set(self.store / pointer.dir)
            if self.expected_features is not None:
                loaded.check_features(self.expected_features)
        except (ModelError, OSError) as exc:
            keeping = self.current.ref if self.current else "no model set"
            self.last_error = f"promoted set refused, keeping {keeping}: {exc}"
            return None
        self.current, self.last_error = loaded, None
        return loaded

    def status(self) -> dict[str, object]:
        """For ``/models`` and ``/health``: the set in use and the last refusal, if any."""
        return {
            "store": str(self.store),
            "current": None if self.current is None else self.current.describe(),
            "last_error": self.last_error,
            "degraded": self.last_error is not None,
        }
