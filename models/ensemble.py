"""The loaded nowcast ensemble: quantile gradient boosting gated with the baseline per regime.

Experts: the seasonal-blend baseline (always there, from state) and, per horizon, three
gradient-boosting models that predict the p10/p50/p90 of the *standardised* error of the
baseline, ``(actual - baseline_p50) / ref``. A regime gate (target hour band x weekend) holds a
blend weight per regime, fitted on validation data: where the learned model does not beat the
baseline in a regime, the weight falls back towards the baseline. This is the mixture-of-experts
of the original design, with a gate that is cheap and that a person can read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from models.artifacts import LoadedModelSet
from models.batch_anomaly import BatchAnomalyModel
from models.exceptions import ArtifactError
from models.features import FEATURE_NAMES

ENSEMBLE_NAME = "nowcast-ensemble"
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
HOUR_BANDS = 4  # 0-6, 6-12, 12-18, 18-24 (UTC)
N_REGIMES = 2 * HOUR_BANDS


def regime_of(target_ms: np.ndarray) -> np.ndarray:
    """Regime index: hour band of the target time, plus 4 on weekends."""
    sec = target_ms // 1000
    band = (sec % 86_400) // (86_400 // HOUR_BANDS)
    weekend = (((sec // 86_400) + 3) % 7) >= 5
    return (band + HOUR_BANDS * weekend).astype(np.int64)


def model_file(horizon_s: int, quantile: float, suffix: str = ".skops") -> str:
    """The file of one quantile model; sets trained before skops hold ``.pkl`` files."""
    return f"gbm_h{horizon_s}_q{int(round(quantile * 100)):02d}{suffix}"


def _model(artifacts: Mapping[str, object], horizon_s: int, quantile: float) -> object:
    name = model_file(horizon_s, quantile)
    if name not in artifacts:  # a set written before skops
        name = model_file(horizon_s, quantile, ".pkl")
    return artifacts[name]


GATE_FILE = "gate.json"


class NowcastEnsemble:
    """Serves a verified model set; refuses one trained on other features or incomplete."""

    def __init__(self, loaded: LoadedModelSet) -> None:
        loaded.check_features(FEATURE_NAMES)
        self.loaded = loaded
        self.ref = loaded.ref
        self.horizons = tuple(int(h) for h in loaded.manifest.horizons_s)
        gate = loaded.artifacts.get(GATE_FILE)
        if not isinstance(gate, Mapping):
            raise ArtifactError(f"{loaded.ref}: {GATE_FILE} missing or not an object")
        self.models: dict[int, list[object]] = {}
        self.gate: dict[int, np.ndarray] = {}
        for h in self.horizons:
            try:
                self.models[h] = [_model(loaded.artifacts, h, q) for q in QUANTILES]
            except KeyError as exc:
                raise ArtifactError(f"{loaded.ref}: no model file {exc.args[0]}") from None
            weights = np.asarray(gate.get(str(h), []), dtype=np.float64)
            if weights.shape != (N_REGIMES,) or not np.all((weights >= 0) & (weights <= 1)):
                raise ArtifactError(
                    f"{loaded.ref}: gate for horizon {h} must be {N_REGIMES} weights in [0, 1]"
                )
            self.gate[h] = weights
        # the set's batch anomaly model (models.batch_anomaly), if it was trained with one
        self.anomaly = BatchAnomalyModel.from_loaded(loaded)

    def covers(self, horizon_s: int) -> bool:
        return horizon_s in self.models

    def predict(
        self,
        horizon_s: int,
        x: np.ndarray,
        target_ms: np.ndarray,
        base_p50: np.ndarray,
        base_lo: np.ndarray,
        base_hi: np.ndarray,
        ref: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p10, p50, p90) blended per regime; non-crossing; baseline where inputs are unusable."""
        learned = np.stack([m.predict(x) for m in self.models[horizon_s]])  # type: ignore[attr-defined]
        learned.sort(axis=0)  # quantiles never cross
        g = base_p50 + ref * learned
        w = self.gate[horizon_s][regime_of(target_ms)]
        out = [w * g[i] + (1.0 - w) * base for i, base in enumerate((base_lo, base_p50, base_hi))]
        usable = np.isfinite(base_p50) & np.all(np.isfinite(g), axis=0)
        lo, p50, hi = (
            np.where(usable, o, b) for o, b in zip(out, (base_lo, base_p50, base_hi), strict=True)
        )
        return lo, p50, hi

    def describe(self) -> dict[str, object]:
        return {
            **self.loaded.describe(),
            "anomaly_model": None if self.anomaly is None else self.anomaly.describe(),
            "gate": {str(h): self.gate[h].round(3).tolist() for h in self.horizons},
        }


def load_ensemble(path: Path | str) -> NowcastEnsemble:
    """The ensemble in a model-set directory, or the promoted one of a store.

    Every file's hash is verified before anything is unpickled (``models.artifacts``).
    """
    from models.artifacts import MANIFEST, load_model_set
    from models.promotion import read_current

    path = Path(path)
    if (path / MANIFEST).is_file():
        return NowcastEnsemble(load_model_set(path))
    pointer = read_current(path)
    if pointer is None:
        raise ArtifactError(f"{path} is neither a model set nor a store with a promoted set")
    return NowcastEnsemble(load_model_set(path / pointer.dir))
