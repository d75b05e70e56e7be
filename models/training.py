"""Training the nowcast ensemble by replaying history through the processor itself.

``train_model_set`` runs a ``GridProcessor`` with a ``FeatureRecorder`` over historical batches:
every forecast the baseline issues is recorded with the features the ensemble would see, and
joined with the actual reading at its target time. The last ``validation_fraction`` of time is
held out: the models are fitted on the rest, the regime gate and every reported metric come from
the held-out span. The set is saved to the store and promoted only if it beats the current one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from models.artifacts import VALIDATION_ERROR, save_model_set
from models.batch_anomaly import ANOMALY_FEATURES, BatchAnomalyModel
from models.ensemble import ENSEMBLE_NAME, GATE_FILE, N_REGIMES, QUANTILES, model_file, regime_of
from models.exceptions import ModelError
from models.features import FEATURE_NAMES
from models.params import ProcessorParams
from models.promotion import PromotionDecision, promote_if_better
from schemas.batch import ReadingBatch

GATE_GRID = np.linspace(0.0, 1.0, 5)
MIN_ROWS = 200  # fewer training pairs than this per horizon is not a model, it is noise


class FeatureRecorder:
    """Forecast features and actual readings, joined by (entity slot, target time) on demand."""

    def __init__(self) -> None:
        self._fc: dict[int, list[tuple[np.ndarray, ...]]] = {}
        self._act: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._det: list[np.ndarray] = []

    def add_forecasts(
        self,
        slots: np.ndarray,
        horizon_s: int,
        target_ms: np.ndarray,
        x: np.ndarray,
        base_p50: np.ndarray,
        ref: np.ndarray,
    ) -> None:
        self._fc.setdefault(horizon_s, []).append(
            (slots.copy(), target_ms.copy(), x.astype(np.float32), base_p50.copy(), ref.copy())
        )

    def add_detector_features(self, x: np.ndarray) -> None:
        self._det.append(x.astype(np.float32))

    def detector_features(self) -> np.ndarray:
        """Every warm reading's batch anomaly model features, in replay order."""
        if not self._det:
            return np.empty((0, len(ANOMALY_FEATURES)), np.float32)
        return np.concatenate(self._det)

    def add_actuals(self, slots: np.ndarray, ts_ms: np.ndarray, value: np.ndarray) -> None:
        self._act.append((slots.copy(), ts_ms.copy(), value.copy()))

    def dataset(self, horizon_s: int) -> TrainingSet:
        """Every recorded forecast of this horizon whose target reading arrived."""
        parts = self._fc.get(horizon_s)
        if not parts or not self._act:
            return TrainingSet.empty()
        slots, target, x, base, ref = (np.concatenate(col) for col in zip(*parts, strict=True))
        a_slot, a_ts, a_val = (np.concatenate(col) for col in zip(*self._act, strict=True))
        t0 = min(int(a_ts.min()), int(target.min()))
        span = max(int(a_ts.max()), int(target.max())) - t0 + 1
        a_key = a_slot * span + (a_ts - t0)
        order = np.argsort(a_key, kind="stable")
        a_key, a_val = a_key[order], a_val[order]
        f_key = slots * span + (target - t0)
        pos = np.clip(np.searchsorted(a_key, f_key), 0, a_key.size - 1)
        hit = a_key[pos] == f_key
        actual = a_val[pos[hit]]
        return TrainingSet(
            x[hit], (actual - base[hit]) / ref[hit], base[hit], ref[hit], target[hit], actual
        )


@dataclass(frozen=True, slots=True)
class TrainingSet:
    x: np.ndarray
    y: np.ndarray  # standardised baseline error
    base: np.ndarray
    ref: np.ndarray
    target_ms: np.ndarray
    actual: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, mask: np.ndarray) -> TrainingSet:
        return TrainingSet(*(getattr(self, f)[mask] for f in self.__slots__))

    @staticmethod
    def empty() -> TrainingSet:
        f = np.empty(0)
        return TrainingSet(
            np.empty((0, len(FEATURE_NAMES)), np.float32), f, f, f, np.empty(0, np.int64), f
        )


def _fit_horizon(
    data: TrainingSet,
    validation_fraction: float,
    seed: int,
    max_iter: int,
) -> tuple[dict[str, object], list[float], dict[str, float]]:
    cut = np.quantile(data.target_ms, 1.0 - validation_fraction)
    train, val = data.take(data.target_ms < cut), data.take(data.target_ms >= cut)
    if len(train) < MIN_ROWS or len(val) < MIN_ROWS // 4:
        raise ModelError(
            f"too little history: {len(train)} training and {len(val)} validation "
            f"pairs (need {MIN_ROWS} and {MIN_ROWS // 4})"
        )
    # A feature with no finite value in the training span (e.g. no profile yet) breaks the
    # binning of gradient boosting; as a constant it is simply never split on.
    empty = ~np.isfinite(train.x).any(axis=0)
    if empty.any():
        train = TrainingSet(
            np.where(empty, 0.0, train.x).astype(np.float32),
            *(getattr(train, f) for f in TrainingSet.__slots__[1:]),
        )
    models: dict[str, object] = {}
    val_q = []
    for q in QUANTILES:
        model = HistGradientBoostingRegressor(
            loss="quantile",
            quantile=q,
            max_iter=max_iter,
            learning_rate=0.05,
            max_leaf_nodes=31,
            min_samples_leaf=40,
            l2_regularization=1.0,
            random_state=seed,
        )
        model.fit(train.x, train.y)
        val_q.append(model.predict(val.x))
        models[f"{q}"] = model
    learned = np.sort(np.stack(val_q), axis=0)
    regime = regime_of(val.target_ms)
    gate = []
    for r in range(N_REGIMES):
        sel = regime == r
        if sel.sum() < 20:
            gate.append(0.0)  # no evidence in this regime: keep the baseline
            continue
        errs = [np.mean(np.abs(val.y[sel] - w * learned[1, sel])) for w in GATE_GRID]
        gate.append(float(GATE_GRID[int(np.argmin(errs))]))
    w = np.asarray(gate)[regime]
    blend = w * learned  # standardised: the baseline is 0, its interval +-Z10 in sigma units
    p50 = val.base + val.ref * blend[1]
    lo = val.base + val.ref * (w * learned[0] + (1 - w) * -1.2815515655446004)
    hi = val.base + val.ref * (w * learned[2] + (1 - w) * 1.2815515655446004)
    metrics = {
        "validation_mae_std": float(np.mean(np.abs(val.y - blend[1]))),
        "baseline_mae_std": float(np.mean(np.abs(val.y))),
        "validation_mae": float(np.mean(np.abs(val.actual - p50))),
        "baseline_mae": float(np.mean(np.abs(val.actual - val.base))),
        "validation_coverage_p10_p90": float(np.mean((val.actual >= lo) & (val.actual <= hi))),
        "train_pairs": float(len(train)),
        "validation_pairs": float(len(val)),
    }
    return models, gate, metrics


def fit_ensemble(
    recorder: FeatureRecorder,
    horizons_s: tuple[int, ...],
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> tuple[dict[str, object], dict[str, float], tuple[int, int]]:
    """Artifacts, metrics and the (start, end) ms of the data for every horizon."""
    artifacts: dict[str, object] = {}
    gates: dict[str, list[float]] = {}
    metrics: dict[str, float] = {}
    span = [np.iinfo(np.int64).max, np.iinfo(np.int64).min]
    for h in horizons_s:
        data = recorder.dataset(h)
        if len(data) == 0:
            raise ModelError(f"no forecast for horizon {h} s ever met its actual reading")
        models, gate, m = _fit_horizon(data, validation_fraction, seed, max_iter)
        for q, model in zip(QUANTILES, models.values(), strict=True):
            artifacts[model_file(h, q)] = model
        gates[str(h)] = gate
        metrics.update({f"h{h}_{k}": v for k, v in m.items()})
        span = [min(span[0], int(data.target_ms.min())), max(span[1], int(data.target_ms.max()))]
    artifacts[GATE_FILE] = gates
    metrics[VALIDATION_ERROR] = float(
        np.mean([metrics[f"h{h}_validation_mae_std"] for h in horizons_s])
    )
    metrics["baseline_error"] = float(
        np.mean([metrics[f"h{h}_baseline_mae_std"] for h in horizons_s])
    )
    return artifacts, metrics, (span[0], span[1])


def record_history(batches: Iterable[ReadingBatch], params: ProcessorParams) -> FeatureRecorder:
    """Replay history through the processor, recording forecast features and actuals."""
    from models.processor import GridProcessor  # the processor imports forecasting, not training

    recorder = FeatureRecorder()
    proc = GridProcessor(params, recorder=recorder)
    for batch in batches:
        if len(batch):
            proc.process_batch(batch, int(batch.ts_ms.max()))
    return recorder


def train_model_set(
    batches: Iterable[ReadingBatch],
    params: ProcessorParams,
    store: Path,
    *,
    name: str = ENSEMBLE_NAME,
    seed: int = 0,
    max_iter: int = 200,
    promote: bool = True,
) -> tuple[Path, dict[str, float], PromotionDecision | None]:
    """Fit, save a new version into ``store`` and (by default) promote it if it is better."""
    recorder = record_history(batches, params)
    artifacts, metrics, (start, end) = fit_ensemble(
        recorder, params.horizons_s, seed=seed, max_iter=max_iter
    )
    detector_x = recorder.detector_features()
    artifacts.update(BatchAnomalyModel.fit(detector_x, seed=seed).artifacts())
    metrics["anomaly_train_rows"] = float(detector_x.shape[0])
    path = save_model_set(
        store,
        name,
        artifacts,
        feature_names=FEATURE_NAMES,
        horizons_s=params.horizons_s,
        training_span=(
            datetime.fromtimestamp(start / 1000, UTC),
            datetime.fromtimestamp(end / 1000, UTC),
        ),
        metrics=metrics,
        params={
            "max_iter": max_iter,
            "seed": seed,
            "quantiles": list(QUANTILES),
            "profile_bucket_s": params.profile_bucket_s,
            "window": params.window,
            "anomaly_features": list(ANOMALY_FEATURES),
        },
    )
    decision = promote_if_better(store, path) if promote else None
    return path, metrics, decision
