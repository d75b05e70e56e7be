"""Energy balance per parent and interval: what flows in against what its meters register.

For every aligned interval (``interval_s``, 15 min) and parent (a transformer with SCADA):

    residual = parent energy - sum of its children's energy - expected technical loss

- Readings are placed by ``ts`` into a ring of open intervals; an interval closes once the
  watermark (newest reading time seen, minus ``lateness_s``) passes its end. A reading for a
  closed interval is counted (``balance_late``), not balanced.
- A child without a reading in a closing interval is *estimated* from its own time-of-day
  profile (the seasonal part of its nowcast) and counted in ``missing``; a child that cannot
  be estimated (no history) leaves its parent unbalanced for that interval, never summed as 0.
- Expected loss ``a + b * (load / level)^2`` (no-load plus copper loss) is learned per parent by
  an EWMA least-squares fit, frozen while the parent is alarming, so a theft is not learned away.
- The loss-ratio residual ``(gap - expected) / load`` is standardised by its own EWMA scale, and
  its recent mean (EWMA, about three hours), in its own standard errors, is judged by the
  parent's calibrated peaks-over-threshold tail (``models.tails``), as the per-series detectors
  judge theirs.
- Children are mapped with ``models.topology`` as of each interval's start, so a re-mapping takes
  effect from its validity time and a correct one changes no balance.

Pure numpy over all children at once per closed interval; no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from models import tails
from models.balance_events import events_for, rows_of
from models.balance_state import (
    SUB,
    TOD,
    BalanceSnapshotError,
    Table,
    child_columns,
    parent_columns,
)
from models.balance_state import dumps as _dumps
from models.balance_state import fill as _fill
from models.balance_state import loads as _loads
from models.params import ProcessorParams
from models.topology import Topology
from schemas.balance import BalanceRows
from schemas.batch import AnomalyRecord


@dataclass(frozen=True, slots=True)
class BalanceParams:
    """Everything that shapes the balance; rates are EWMA weights of the newest interval."""

    interval_s: int = 900
    lateness_s: int = 3600  # readings this far behind the newest still count
    warmup: int = 192  # intervals a parent balances before it is judged (two days)
    loss_rate: float = 1.0 / 1344  # loss regression memory: two weeks of intervals
    scale_rate: float = 1.0 / 672  # residual scale memory: a week
    profile_rate: float = 0.05  # a child's time-of-day bucket, once a day: about 20 days
    dev_rate: float = 1.0 / 24  # a child's recent departure: about six hours
    ewma_rate: float = 1.0 / 12  # the residual's recent mean: about three hours
    estimate_error: float = 0.5  # relative error of a missing child's estimate (one interval)
    z_clip: float = 10.0  # one interval moves the recent mean by at most this many scales
    onset_sd: float = 2.0  # an incident started when its recent mean last was this close to 0
    tail_min: int = 192  # recent means a parent's tail learns before it scores (two days)
    teach_max: float = 4.0  # recent means beyond this many standard errors do not teach the tail
    alarm_log10p: float = -6.0  # tail probability of the recent mean at which a parent alarms
    cooldown: int = 96  # intervals without alarm that end an incident
    max_missing_share: float = 0.5  # more estimated children than this: not balanced
    suspects: int = 5


@dataclass(slots=True)
class BalanceOutput:
    """Closed intervals (one row per balanced parent and interval) and the events they raised."""

    rows: list[BalanceRows] = field(default_factory=list)
    events: list[AnomalyRecord] = field(default_factory=list)
    late: int = 0


class BalanceCore:
    """Children's and parents' readings in, balance rows and ``balance`` events out."""

    def __init__(
        self,
        params: BalanceParams | None = None,
        topology: Topology | None = None,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        """``owns(parent)`` says which parents this core balances (those of its partition in a
        live run); children of other parents are left to their own core."""
        self.params = p = params or BalanceParams()
        self.topology = topology or Topology()
        self.owns = owns
        self.interval_ms = p.interval_s * 1000
        self.slots = -(-p.lateness_s // p.interval_s) + 2
        self.children = Table(child_columns(self.slots))
        self.parents = Table(parent_columns(self.slots))
        self.tail_params = ProcessorParams(tail_min=p.tail_min, tail_min_excess=10)
        self.watermark_iv = -1  # intervals below this are closed
        self.newest = np.array([-1, -1], dtype=np.int64)  # newest child, parent reading time
        self._mapped = (-1, -1)  # (topology version, interval) of the current mapping
        self.extra: dict[str, int] = {}

    # -- input ------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, kinds: np.ndarray, ts_ms: np.ndarray, kw: np.ndarray) -> int:
        """Place readings (kW; MW of SCADA converted by the caller) in their open interval.

        Meters go to the child table, transformers to the parent table; others are ignored.
        Returns how many were too late for their interval."""
        iv = ts_ms // self.interval_ms
        ok = np.isfinite(kw) & (iv >= self.watermark_iv)
        late = int(np.count_nonzero(np.isfinite(kw) & (iv < self.watermark_iv)))
        meter = ok & (kinds == "meter")
        if meter.any():
            rows = self.children.rows(ids[meter].tolist())
            k = iv[meter] % self.slots
            self.children.cols["kw"][rows, k] = kw[meter]
            self.children.cols["iv"][rows, k] = iv[meter]
        parent = ok & (kinds == "transformer")
        if parent.any():
            rows = self.parents.rows(ids[parent].tolist())
            k = iv[parent] % self.slots
            sub = (ts_ms[parent] % self.interval_ms) * SUB // self.interval_ms
            c = self.parents.cols
            stale = c["iv"][rows, k] != iv[parent]
            c["kw"][rows[stale], k[stale], :] = np.nan
            c["iv"][rows, k] = iv[parent]
            c["kw"][rows, k, sub] = kw[parent]
        for j, sel in enumerate((meter, parent)):
            if sel.any():
                self.newest[j] = max(self.newest[j], int(ts_ms[sel].max()))
        return late

    def process(
        self, ids: np.ndarray, kinds: np.ndarray, ts_ms: np.ndarray, kw: np.ndarray
    ) -> BalanceOutput:
        """Readings in their log order; intervals close exactly where the watermark passes them
        in that order, so the output does not depend on how the log was cut into batches."""
        out = BalanceOutput()
        newest = [
            np.maximum.accumulate(np.where(kinds == kind, ts_ms, -1).clip(self.newest[j]))
            for j, kind in enumerate(("meter", "transformer"))
        ]
        until = self._until(*newest) if len(ts_ms) else ts_ms
        before = self._until(self.newest[:1], self.newest[1:])[0]
        cuts = np.flatnonzero(np.diff(np.concatenate([[before], until])) > 0).tolist()
        start = 0
        for cut in [*cuts, len(ts_ms)]:
            # close what the reading at ``cut`` passes before it can overwrite an open slot
            out.late += self.add(ids[start:cut], kinds[start:cut], ts_ms[start:cut], kw[start:cut])
            if cut < len(ts_ms):
                self.newest = np.maximum(self.newest, [newest[0][cut], newest[1][cut]])
            step = self.advance()
            out.rows += step.rows
            out.events += step.events
            start = cut
        return out

    def _until(self, child_ms: np.ndarray, parent_ms: np.ndarray) -> np.ndarray:
        """First interval still open for each (newest child, newest parent) reading time.

        The slower of the two sources holds intervals open (a backlog of meters read ahead of
        SCADA does not make SCADA late), but never by more than the ring holds; -1 before any."""
        both = np.minimum(child_ms, parent_ms)
        ahead = np.maximum(child_ms, parent_ms)
        until = (both - self.params.lateness_s * 1000) // self.interval_ms
        ring = ahead // self.interval_ms - self.slots + 2  # the newest reading's slot is free
        until = np.where(both >= 0, np.maximum(until, ring), ring)
        return np.where(ahead >= 0, until, -1)

    def advance(self) -> BalanceOutput:
        """Close every interval the watermark has passed; their rows and events."""
        out = BalanceOutput()
        until = int(self._until(self.newest[:1], self.newest[1:])[0])
        if until < 0:
            return out
        if self.watermark_iv < 0:
            self.watermark_iv = until - self.slots + 2
        while self.watermark_iv < until:
            rows, events = self._close(self.watermark_iv)
            if len(rows):
                out.rows.append(rows)
            out.events.extend(events)
            self.watermark_iv += 1
        return out

    # -- one interval -----------------------------------------------------------------------
    def _close(self, i: int) -> tuple[BalanceRows, list[AnomalyRecord]]:
        self._remap(i)
        k, n, npar = i % self.slots, len(self.children), len(self.parents)
        c = self.children.cols
        par, has = c["parent"][:n], c["iv"][:n, k] == i
        tod = int((i * self.interval_ms) % 86_400_000 * TOD // 86_400_000)
        est = c["prof"][:n, tod].astype(np.float64)
        est = np.where(np.isfinite(est), est, c["last"][:n])
        val = np.where(has, c["kw"][:n, k], est)
        m = par >= 0
        miss = m & ~has
        sums = [
            np.bincount(par[sel], w, minlength=npar)[:npar]
            for sel, w in (
                (m, np.nan_to_num(val[m])),
                (m, None),
                (miss, None),
                (miss, np.nan_to_num(est[miss])),
                (m & ~np.isfinite(val), None),
            )
        ]
        kids, n_kids, n_miss, est_kw, unknown = sums
        pc = self.parents.cols
        slot = np.where((pc["iv"][:npar, k] == i)[:, None], pc["kw"][:npar, k, :], np.nan)
        count = np.isfinite(slot).sum(axis=1)
        load = np.where(count > 0, np.nansum(slot, axis=1) / np.maximum(count, 1), np.nan)
        ok = (
            np.isfinite(load)
            & (load > 0)
            & (n_kids > 0)
            & (unknown == 0)
            & (n_miss <= self.params.max_missing_share * n_kids)
        )
        rows = np.flatnonzero(ok)
        scored = self._score(i, rows, load[rows], kids[rows], est_kw[rows])
        self._learn_children(has, val, est, tod)
        table = rows_of(self, i, rows, scored, (load, kids, n_kids, n_miss, est_kw))
        return table, events_for(self, i, rows, scored, table)

    def _remap(self, i: int) -> None:
        """Children's parents as of interval ``i``'s start, when the topology says they moved."""
        t0 = i * self.interval_ms
        version, at = self._mapped
        changed = self.topology.changes_between(at * self.interval_ms, t0)
        if version == self.topology.version and not changed:
            return
        mine = self.owns or (lambda _: True)
        everyone = self.topology.children("meter")
        self.children.rows([m for m in everyone if mine(self.topology.parent_at(m, t0) or "")])
        parents = [self.topology.parent_at(cid, t0) for cid in self.children.ids]
        parents = [p if p is not None and mine(p) else None for p in parents]
        known = [p for p in parents if p is not None]
        prow = dict(zip(known, self.parents.rows(known).tolist(), strict=True))
        new = np.array([prow[p] if p is not None else -1 for p in parents], dtype=np.int64)
        c, n = self.children.cols, len(self.children)
        moved = (c["parent"][:n] != new) & (c["parent"][:n] >= 0)
        c["prev_parent"][:n][moved] = c["parent"][:n][moved]
        c["moved_iv"][:n][moved] = i
        c["parent"][:n] = new
        self._mapped = (self.topology.version, i)

    def _score(
        self, i: int, rows: np.ndarray, load: np.ndarray, kids: np.ndarray, est: np.ndarray
    ) -> dict:
        """Expected loss, the residual in its own scales (widened by the uncertainty of the
        estimated children), its recent mean and that mean's calibrated tail probability."""
        p, c = self.params, self.parents.cols
        level = np.where(np.isfinite(c["level"][rows]), c["level"][rows], load)
        x = (load / level) ** 2
        sxx, sxy = c["sxx"][rows], c["sxy"][rows]
        det = sxx[:, 0] * sxx[:, 2] - sxx[:, 1] ** 2 + 1e-3
        b = np.where(sxx[:, 0] > 0, (sxx[:, 0] * sxy[:, 1] - sxx[:, 1] * sxy[:, 0]) / det, 0.0)
        a = np.where(sxx[:, 0] > 0, (sxy[:, 0] - b * sxx[:, 1]) / np.maximum(sxx[:, 0], 1e-12), 0)
        expected = (a + b * x) * level
        gap = load - kids
        rho = (gap - expected) / load
        scale = c["scale"][rows]
        warm = (c["n"][rows] >= p.warmup) & np.isfinite(scale) & (scale > 0)
        sd = np.hypot(np.where(warm, scale, 1.0), p.estimate_error * est / load)
        z = np.where(warm, np.clip(rho / sd, -p.z_clip, p.z_clip), 0.0)
        ew = np.where(warm, c["ewma"][rows] + p.ewma_rate * (z - c["ewma"][rows]), 0.0)
        stat = np.abs(ew) / np.sqrt(p.ewma_rate / (2.0 - p.ewma_rate))
        c["onset"][rows] = np.where(stat < p.onset_sd, i, c["onset"][rows])
        c["ewma"][rows] = ew
        logp = self._judge(rows, np.where(warm, stat, np.nan))
        alarm = warm & (logp <= p.alarm_log10p)
        self._learn_parents(rows, load, level, x, gap / level, rho, alarm | (np.abs(z) > 4))
        return {
            "recent_kw": ew * scale * load,  # the recent mean unexplained kW
            "expected": expected,
            "gap": gap,
            "rho": rho,
            "z": z,
            "logp": logp,
            "alarm": alarm,
            "sign": np.where(ew >= 0, 1, -1),
        }

    def _judge(self, rows: np.ndarray, stat: np.ndarray) -> np.ndarray:
        """``log10`` tail probability of each parent's statistic under its own calibrated tail.

        A statistic beyond ``teach_max`` standard errors is scored but does not teach the tail:
        the recent mean is autocorrelated, and an incident would otherwise raise its own bar
        within hours."""
        c, tp = self.parents.cols, self.tail_params
        ready = (c["tail_n"][rows, 0] >= tp.tail_min) & (c["tail_k"][rows, 0] >= tp.tail_min_excess)
        tail = (c["tail_u"][rows, 0], c["tail_m1"][rows, 0], c["tail_m2"][rows, 0])
        logp = tails.log10_tail(
            np.nan_to_num(stat), *tail, ready & np.isfinite(stat), tp, c["tail_r"][rows, 0]
        )
        teach = np.where(stat <= self.params.teach_max, stat, np.nan)
        tails.score_and_learn(c, rows, 0, teach, tp)
        return logp

    def _learn_parents(self, rows, load, level, x, y, rho, protect) -> None:  # noqa: ANN001
        p, c = self.params, self.parents.cols
        n = c["n"][rows].astype(np.float64)
        learn = ~protect | (n < p.warmup)
        r = np.where(learn, np.maximum(1.0 / (n + 1.0), p.loss_rate), 0.0)[:, None]
        c["sxx"][rows] += r * (np.column_stack([np.ones_like(x), x, x * x]) - c["sxx"][rows])
        c["sxy"][rows] += r * (np.column_stack([y, x * y]) - c["sxy"][rows])
        scale = c["scale"][rows]
        a = np.minimum(np.abs(rho), np.where(np.isfinite(scale), 4 * scale, np.inf))
        rs = np.maximum(1.0 / (n + 1.0), p.scale_rate)
        c["scale"][rows] = np.where(
            learn, np.where(np.isfinite(scale), scale + rs * (a - scale), a), scale
        )
        # the load scale of the loss model is frozen once warm, so its coefficients keep meaning
        rl = np.where(n < p.warmup, 1.0 / (n + 1.0), 0.0)
        c["level"][rows] = level + rl * (load - level)
        c["n"][rows] += 1

    def _learn_children(self, has: np.ndarray, val: np.ndarray, est: np.ndarray, tod: int):
        """Profiles, recent departures and levels of the children that reported."""
        p, c = self.params, self.children.cols
        idx = np.flatnonzero(has)
        kw = val[idx]
        prof = c["prof"][idx, tod]
        known = np.isfinite(prof)
        dev = np.where(known, kw - prof, 0.0)
        c["fast_dev"][idx] += np.where(known, p.dev_rate * (dev - c["fast_dev"][idx]), 0.0)
        spread = c["dev_abs"][idx]
        fresh = known & ~np.isfinite(spread)
        c["dev_abs"][idx] = np.where(
            fresh,
            np.abs(dev),
            np.where(known, spread + p.dev_rate / 4 * (np.abs(dev) - spread), spread),
        )
        c["prof"][idx, tod] = np.where(known, prof + p.profile_rate * (kw - prof), kw)
        lvl = c["level"][idx]
        c["level"][idx] = np.where(np.isfinite(lvl), lvl + p.dev_rate / 28 * (kw - lvl), kw)
        c["last"][idx] = kw

    # -- snapshot ---------------------------------------------------------------------------
    def dumps(self, **extra: int) -> bytes:
        """The state as ``.npz`` bytes; ``extra`` (e.g. the partition position) rides along."""
        meta = {
            "params": asdict(self.params),
            "watermark_iv": self.watermark_iv,
            "newest": self.newest.tolist(),
            "extra": extra,
        }
        return _dumps(meta, self.children, self.parents)

    @classmethod
    def loads(
        cls, blob: bytes, topology: Topology, owns: Callable[[str], bool] | None = None
    ) -> BalanceCore:
        """A core from ``dumps`` bytes; the topology is the live table (rebuilt from its topic).
        ``core.extra`` holds what ``dumps`` was given."""
        core_meta, arrays = _loads(blob)
        try:
            params = BalanceParams(**core_meta["params"])  # type: ignore[arg-type]
        except TypeError as exc:
            raise BalanceSnapshotError(f"balance parameters differ: {exc}") from exc
        core = cls(params, topology, owns)
        _fill(arrays, core.children, core.parents)
        core.extra = dict(core_meta.get("extra") or {})  # type: ignore[call-overload]
        core.watermark_iv = int(core_meta["watermark_iv"])  # type: ignore[arg-type]
        core.newest = np.array(core_meta["newest"], dtype=np.int64)
        return core
