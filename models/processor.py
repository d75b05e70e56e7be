"""The streaming core: one batch of readings in, forecasts, scores and anomaly events out.

No I/O, no clock, no metrics: the caller passes ``now_ms`` and reads counters off the result, so
the same object runs live under Kafka, in a backtest and in a benchmark.

A batch may hold several readings of one entity. They are processed in *rounds*: round k holds
the k-th reading of every entity in the batch, so each round touches an entity at most once and
is fully vectorised, while readings of one entity still see each other in arrival order. The
global river model is the exception: it sees the batch's readings one by one in arrival order
after the rounds, then each round is fused and emitted, so output never depends on batch cuts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
import river

from models import detectors as det
from models import fusion, snapshot, tails
from models.batch_anomaly import DETECTOR as BATCH_DETECTOR
from models.batch_anomaly import BatchAnomalyModel, anomaly_features
from models.batch_anomaly import log10_tail as batch_log10_tail
from models.drift import ResidualDrift
from models.events import build_events
from models.forecasting import Forecaster, Part, Recorder
from models.learning import learn
from models.nowcast import MODEL_VERSION
from models.online import GatedHalfSpaceTrees
from models.params import ProcessorParams
from models.scoring import score_round
from models.state import NO_TS, EntityState
from schemas.batch import (
    AnomalyRecord,
    DriftEventRecord,
    ForecastBatch,
    ReadingBatch,
    Rejection,
    entity_key,
)

if TYPE_CHECKING:
    from models.ensemble import NowcastEnsemble


@dataclass(slots=True)
class ProcessResult:
    """What one batch produced. Arrays indexed like the input batch carry NaN/-1 where a reading
    was not scored (dropped, rejected, or its entity still warming up)."""

    forecasts: ForecastBatch
    anomalies: list[AnomalyRecord]
    rejections: list[Rejection]  # out_of_order / conflicting_duplicate, by src_index
    score: np.ndarray  # float64 per input row
    severity: np.ndarray  # int64 rank per input row: -1 none, 0 info, 1 warning, 2 critical
    expected: np.ndarray  # float64 per input row: the one-step expectation it was scored against
    forecast_rows: np.ndarray  # int64: input row of each forecast
    residual_z: np.ndarray = field(default_factory=lambda: np.empty(0))  # per row, NaN unscored
    drift_events: list[DriftEventRecord] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per model (model_versions)

    @classmethod
    def blank(cls, n: int, model: str) -> ProcessResult:
        """A result for ``n`` rows with nothing scored yet: NaN scores, no severity, no outputs."""
        return cls(
            forecasts=ForecastBatch.empty(model),
            anomalies=[],
            rejections=[],
            score=np.full(n, np.nan),
            severity=np.full(n, -1, dtype=np.int64),
            expected=np.full(n, np.nan),
            forecast_rows=np.empty(0, dtype=np.int64),
            residual_z=np.full(n, np.nan),
        )


class GridProcessor:
    """Per-entity windows, the baseline nowcast, online detectors and fusion over column batches."""

    def __init__(
        self,
        params: ProcessorParams | None = None,
        state: EntityState | None = None,
        online: GatedHalfSpaceTrees | None = None,
        ensemble: NowcastEnsemble | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.params = params or ProcessorParams()
        self.state = state or EntityState(self.params)
        self.online = online or GatedHalfSpaceTrees(self.params)
        self.drift = ResidualDrift(self.params.drift_delta, self.params.drift_sample_every)
        self.forecaster = Forecaster(self.params, ensemble, recorder)
        self._recorder = recorder
        self.model_versions = {
            "nowcast": self.forecaster.model,
            "detectors": f"gridstream-detectors@{MODEL_VERSION}",
            "online": f"river-hst@{river.__version__}",
        }
        self.set_ensemble(ensemble)

    @property
    def model(self) -> str:
        """name@version of what issues the forecasts: the loaded ensemble or the baseline."""
        return self.forecaster.model

    def set_ensemble(self, ensemble: NowcastEnsemble | None) -> None:
        """Swap the loaded model set between batches (hot reload); None goes back to baseline."""
        self.forecaster.ensemble = ensemble
        versions = {k: v for k, v in self.model_versions.items() if k != BATCH_DETECTOR}
        if self.batch_model is not None:
            versions[BATCH_DETECTOR] = self.batch_model.ref
        self.model_versions = {**versions, "nowcast": self.forecaster.model}

    @property
    def batch_model(self) -> BatchAnomalyModel | None:
        """The batch anomaly model of the loaded set, if it has one."""
        ensemble = self.forecaster.ensemble
        return getattr(ensemble, "anomaly", None)

    # -- public ------------------------------------------------------------------------------
    def process_batch(self, batch: ReadingBatch, now_ms: int) -> ProcessResult:
        """Score every reading against the state before it, then learn it; never mutates input."""
        n = len(batch)
        res = ProcessResult.blank(n, self.model)
        if n == 0:
            return res
        keys = entity_key(batch.kind, batch.entity).tolist()
        slots = self.state.slots_for(keys, batch.kind.tolist())
        t0 = perf_counter()
        rounds: list[_Round] = []
        for rows in _rounds(slots):
            rnd = self._round(batch, rows, slots[rows], res)
            if rnd is not None:
                rounds.append(rnd)
        t1 = perf_counter()
        if rounds:
            if "hst" in self.params.detectors:
                self._online_scores(batch, keys, rounds)
            self._batch_model_scores(rounds)
        t2 = perf_counter()
        emitted: list[tuple[int, AnomalyRecord]] = []
        for rnd in rounds:  # round order keeps each entity's cooldown in arrival order
            emitted.extend(self._fuse_and_emit(batch, rnd, res, now_ms))
        emitted.sort(key=lambda e: e[0])  # events in input order, as one-by-one would give them
        res.anomalies = [ev for _, ev in emitted]
        res.rejections.sort(key=lambda r: r.src_index)
        t3 = perf_counter()
        forecast_parts = [rnd.forecast for rnd in rounds if rnd.forecast is not None]
        if forecast_parts:
            res.forecasts, res.forecast_rows = self._assemble_forecasts(batch, forecast_parts)
        in_rounds = res.timings.get("nowcast", 0.0)  # forecast time inside the rounds
        res.timings.update(
            nowcast=in_rounds + perf_counter() - t3,
            detectors=(t1 - t0) - in_rounds + (t3 - t2),
            online=t2 - t1,
        )
        res.drift_events = self.drift.update(keys, batch.kind, batch.ts_ms, res.residual_z, now_ms)
        res.counters["readings"] += n
        res.counters["forecasts"] += len(res.forecasts)
        if res.drift_events:
            res.counters["drift_events"] += len(res.drift_events)
        return res

    def snapshot(self) -> bytes:
        """The whole core state as data: arrays and typed JSON in one ``.npz``, no pickle
        (windows, profiles, detector memories, river model; ``models.snapshot``)."""
        return snapshot.dumps(self)

    @classmethod
    def from_snapshot(cls, blob: bytes) -> GridProcessor:
        """Rebuild a processor from ``snapshot()`` output; ``snapshot.SnapshotError`` if this
        version cannot restore it exactly (other format, state columns or river version)."""
        return snapshot.loads(cls, blob)

    @property
    def entities(self) -> int:
        return self.state.size

    # -- one round: each entity at most once -------------------------------------------------
    def _round(
        self, batch: ReadingBatch, rows: np.ndarray, s: np.ndarray, res: ProcessResult
    ) -> _Round | None:
        """Order checks, scoring against the state before, learning, then forecasting."""
        p, c = self.params, self.state.cols
        kept = _order_checks(batch, rows, s, c, res)
        if kept is None:
            return None
        rows, s, seen = kept
        sc = score_round(p, c, batch, rows, s, seen)
        ts, warm = sc.observed.ts, sc.warm
        res.expected[rows] = sc.feats["expected"]
        res.residual_z[rows] = np.where(warm, sc.feats["z"], np.nan)
        res.counters["scored"] += int(warm.sum())
        res.counters["warming_up"] += int((~warm).sum())
        batch_x = None
        if self.batch_model is not None or self._recorder is not None:
            f = sc.feats
            batch_x = anomaly_features(
                f["z"],
                f["zs"],
                f["cusum"],
                np.abs(f["zc"][:, det.SCORED_CHANNELS]).max(axis=1),
                f["run"],
                f["z_lik"],
                f["z_lvl"],
            )
            if self._recorder is not None:
                self._recorder.add_detector_features(batch_x[warm])
                self._recorder.add_actuals(s, ts, sc.observed.v)
        learn(p, c, sc.observed)
        started = perf_counter()
        forecast = self.forecaster.forecast(c, rows, s, ts, batch.kind[rows] == "meter")
        res.timings["nowcast"] = res.timings.get("nowcast", 0.0) + perf_counter() - started
        return _Round(rows, s, ts, warm, sc.logp, sc.hst_x, sc.gate, sc.feats, batch_x, forecast)

    def _online_scores(self, batch: ReadingBatch, keys: list[str], rounds: list[_Round]) -> None:
        """The river model over the batch's scored readings one by one, in arrival order."""
        rows = np.concatenate([r.rows for r in rounds])
        order = np.argsort(rows, kind="stable")
        arrival = rows[order]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(r, name) for r in rounds])[order]

        learn_rows = self.online.learn_schedule([keys[i] for i in arrival], batch.ts_ms[arrival])
        by_row = np.zeros(len(batch), dtype=np.float64)
        by_row[arrival] = self.online.score_and_learn(
            cat("hst_x"), cat("gate"), cat("warm"), learn_rows
        )
        for r in rounds:
            r.raw["hst"] = by_row[r.rows]

    def _batch_model_scores(self, rounds: list[_Round]) -> None:
        """The loaded batch anomaly model over the gated warm readings, one call per batch.

        A pure function of each reading's features: the same whatever the batch cuts."""
        model = self.batch_model
        if model is None:
            return
        gates = [r.gate & r.warm if r.batch_x is not None else None for r in rounds]
        xs = [r.batch_x[g] for r, g in zip(rounds, gates, strict=True) if g is not None]
        scored = model.score(np.concatenate(xs)) if xs else np.zeros(0)
        at = 0
        for r, g in zip(rounds, gates, strict=True):
            out = np.zeros(r.rows.size)
            if g is not None:
                k = int(g.sum())
                out[g] = scored[at : at + k]
                at += k
            r.raw[BATCH_DETECTOR] = out

    def _fuse_and_emit(
        self, batch: ReadingBatch, rnd: _Round, res: ProcessResult, now_ms: int
    ) -> list[tuple[int, AnomalyRecord]]:
        """Fused score and severity of a round, and its events (with their input rows)."""
        p, c = self.params, self.state.cols
        rows, s, ts, warm = rnd.rows, rnd.s, rnd.ts, rnd.warm
        logp = dict(rnd.logp)
        if BATCH_DETECTOR in rnd.raw:  # calibrated on its training distribution
            logp[BATCH_DETECTOR] = batch_log10_tail(rnd.raw[BATCH_DETECTOR])
        if "hst" in rnd.raw:  # river's mass score, calibrated per entity like a statistic
            stat = np.where(rnd.gate & warm & (rnd.raw["hst"] > 0), rnd.raw["hst"], np.nan)
            logp["hst"] = tails.score_and_learn(c, s, tails.TAIL_SLOTS["hst"], stat, p)
        fused = np.where(warm, fusion.score_of(fusion.fuse(logp, p), p), 0.0)
        shown, rank, news = fusion.incidents(c, s, ts, fused, warm, p)
        res.score[rows] = np.where(warm, shown, np.nan)
        res.severity[rows] = rank
        over = warm & (fused >= p.emit_threshold)
        res.counters["suppressed_cooldown"] += int((over & ~news).sum())
        idx = np.flatnonzero(news)
        if idx.size == 0:
            return []
        scores = {name: fusion.score_of(lp, p) for name, lp in logp.items()}
        feats = dict(rnd.feats)
        if BATCH_DETECTOR in rnd.raw:
            feats[BATCH_DETECTOR] = rnd.raw[BATCH_DETECTOR]
        events = build_events(
            batch, rows, idx, shown, rank, scores, feats, p, self.model_versions, now_ms
        )
        for ev in events:
            res.counters[f"anomalies_{ev.severity}"] += 1
        return list(zip(rows[idx].tolist(), events, strict=True))

    def _assemble_forecasts(
        self, batch: ReadingBatch, parts: list[Part]
    ) -> tuple[ForecastBatch, np.ndarray]:
        rows = np.concatenate([x.rows for x in parts])
        order = np.argsort(rows, kind="stable")  # input order; horizons stay in params order
        rows = rows[order]

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(x, name) for x in parts])[order]

        horizon, target = cat("horizon"), cat("target")
        p10, p50, p90 = cat("p10"), cat("p50"), cat("p90")
        if parts[0].x is not None:
            self.forecaster.refine(horizon, target, p10, p50, p90, cat("x"), cat("ref"))
        fb = ForecastBatch(
            entity=batch.entity[rows],
            kind=batch.kind[rows],
            issued_ms=batch.ts_ms[rows],
            horizon_s=horizon,
            target_ms=target,
            p10=p10,
            p50=p50,
            p90=p90,
            model=self.model,
        )
        return fb, rows


@dataclass(slots=True)
class _Round:
    """One round's readings after learning: what fusion and emission still need."""

    rows: np.ndarray
    s: np.ndarray
    ts: np.ndarray
    warm: np.ndarray
    logp: dict[str, np.ndarray]  # per-reading detectors: log10 tail probabilities
    hst_x: np.ndarray
    gate: np.ndarray
    feats: dict[str, np.ndarray]
    batch_x: np.ndarray | None = None  # batch anomaly model features, when it is needed
    forecast: Part | None = None
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # per-batch models' raw scores


def _order_checks(
    batch: ReadingBatch,
    rows: np.ndarray,
    s: np.ndarray,
    c: dict[str, np.ndarray],
    res: ProcessResult,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Drop redeliveries, reject late and conflicting readings; ``(rows, slots, seen)`` kept."""
    ts = batch.ts_ms[rows]
    v = batch.value[rows]
    last_ts = c["last_ts"][s]
    seen = last_ts != NO_TS
    same_ts = seen & (ts == last_ts)
    duplicate = same_ts & (v == c["last_value"][s])
    conflict = same_ts & ~duplicate
    late = seen & (ts < last_ts)
    res.counters["dropped_duplicate"] += int(duplicate.sum())
    for j in np.flatnonzero(conflict | late):
        src = int(batch.src_index[rows[j]])
        if conflict[j]:
            msg = f"ts {int(ts[j])} already seen with value {float(c['last_value'][s[j]])!r}"
            res.rejections.append(Rejection(src, "conflicting_duplicate", msg))
        else:
            msg = f"ts {int(ts[j])} is before the entity's last reading at {int(last_ts[j])}"
            res.rejections.append(Rejection(src, "out_of_order", msg))
    ok = ~(same_ts | late)
    if not ok.all():
        rows, s, seen = rows[ok], s[ok], seen[ok]
    return None if rows.size == 0 else (rows, s, seen)


def _rounds(slots: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped so that round k holds the k-th occurrence of every slot."""
    n = slots.size
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.r_[True, sorted_slots[1:] != sorted_slots[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    if rank.max() == 0:
        return [np.arange(n)]
    by_rank = np.argsort(rank, kind="stable")
    counts = np.bincount(rank)
    return np.split(by_rank, np.cumsum(counts)[:-1])
