"""The batch anomaly model of a loaded model set: an IsolationForest on detector feature vectors.

``gridstream train`` replays history through the processor; every warm reading leaves one
feature vector (``ANOMALY_FEATURES``: the standardised departures the online detectors compute).
An sklearn ``IsolationForest`` learns what combinations of them are ordinary for the fleet, and
is saved in the model set next to the nowcast models (``ANOMALY_FILE``, and ``ANOMALY_META`` with
its feature names, NaN fill values and score calibration), hashed in the manifest like them.

Serving: the processor scores only readings that an online detector already finds suspicious
(``gate_decades``), in one vectorised call per batch; every other reading scores 0.
The raw isolation score is mapped to [0, 1] by the training distribution: a reading as unusual
as the ``CALIBRATION_QUANTILE`` of training vectors scores 0.5, and ``log10_tail`` turns that
into a tail probability for fusion (detector ``iforest``). A set whose anomaly model was trained
on other features is refused with ``IncompatibleModel``; NaN features (a detector with no memory
yet) are filled with the training medians.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.ensemble import IsolationForest

from models.artifacts import LoadedModelSet
from models.exceptions import ArtifactError, IncompatibleModel, ModelError

DETECTOR = "iforest"
ANOMALY_FILE = "anomaly_iforest.skops"
ANOMALY_FILE_PICKLE = "anomaly_iforest.pkl"  # sets written before skops
ANOMALY_META = "anomaly.json"
ANOMALY_FEATURES: tuple[str, ...] = (
    "abs_residual_z",
    "abs_seasonal_z",
    "cusum",
    "abs_channel_z",
    "identical_run",
    "likelihood_z",
    "abs_level_z",
)
CALIBRATION_QUANTILE = 0.99
MAX_TRAIN_ROWS = 50_000
MIN_TRAIN_ROWS = 200


def anomaly_features(
    z: np.ndarray,
    zs: np.ndarray,
    cusum: np.ndarray,
    zc: np.ndarray,
    run: np.ndarray,
    z_lik: np.ndarray,
    z_lvl: np.ndarray,
) -> np.ndarray:
    """The ``(n, len(ANOMALY_FEATURES))`` matrix, squashed so no feature dominates by range."""
    cols = (np.abs(z), np.abs(zs), cusum, zc, run.astype(np.float64), z_lik, np.abs(z_lvl))
    return np.arcsinh(np.column_stack(cols))


class BatchAnomalyModel:
    """A fitted forest, its feature names, NaN fill values and score calibration."""

    def __init__(
        self,
        forest: IsolationForest,
        feature_names: tuple[str, ...],
        fill: np.ndarray,
        center: float,
        width: float,
        ref: str = "unsaved",
    ) -> None:
        if list(feature_names) != list(ANOMALY_FEATURES):
            model, given = set(feature_names), set(ANOMALY_FEATURES)
            raise IncompatibleModel(
                f"{ref} ({ANOMALY_FILE})",
                sorted(model - given),
                sorted(given - model),
                model == given,
            )
        self.forest = forest
        self.feature_names = tuple(feature_names)
        self.fill = np.asarray(fill, dtype=np.float64)
        self.center = float(center)
        self.width = float(width)
        self.ref = ref

    @classmethod
    def fit(cls, x: np.ndarray, seed: int = 0) -> BatchAnomalyModel:
        """Fit on training vectors (rows with NaN are filled with the column medians)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(ANOMALY_FEATURES):
            want = len(ANOMALY_FEATURES)
            raise ModelError(f"anomaly features must be (n, {want}), got {x.shape}")
        if x.shape[0] < MIN_TRAIN_ROWS:
            raise ModelError(f"too little history for the anomaly model: {x.shape[0]} readings")
        rng = np.random.default_rng(seed)
        if x.shape[0] > MAX_TRAIN_ROWS:
            x = x[np.sort(rng.choice(x.shape[0], MAX_TRAIN_ROWS, replace=False))]
        finite = np.isfinite(x)
        fill = np.zeros(x.shape[1])  # a feature never seen in training: 0, no departure
        for k in np.flatnonzero(finite.any(axis=0)):
            fill[k] = float(np.median(x[finite[:, k], k]))
        x = _filled(x, fill)
        forest = IsolationForest(n_estimators=100, max_samples=256, random_state=seed)
        forest.fit(x)
        raw = -forest.score_samples(x)
        center = float(np.quantile(raw, CALIBRATION_QUANTILE))
        width = max(float(center - np.median(raw)) / 6.0, 1e-3)
        return cls(forest, ANOMALY_FEATURES, fill, center, width)

    @classmethod
    def from_loaded(cls, loaded: LoadedModelSet) -> BatchAnomalyModel | None:
        """The anomaly model of a verified set, None if the set has none."""
        name = ANOMALY_FILE if ANOMALY_FILE in loaded.artifacts else ANOMALY_FILE_PICKLE
        if name not in loaded.artifacts:
            return None
        meta = loaded.artifacts.get(ANOMALY_META)
        forest = loaded.artifacts[name]
        if not isinstance(meta, Mapping) or not isinstance(forest, IsolationForest):
            raise ArtifactError(
                f"{loaded.ref}: {ANOMALY_FILE} needs an IsolationForest and {ANOMALY_META} "
                "an object with feature_names, fill, center and width"
            )
        try:
            names = tuple(str(n) for n in meta["feature_names"])
            fill = np.asarray(meta["fill"], dtype=np.float64)
            center, width = float(meta["center"]), float(meta["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{loaded.ref}: {ANOMALY_META} is malformed: {exc!r}") from None
        if fill.shape != (len(names),) or not np.all(np.isfinite(fill)) or width <= 0:
            raise ArtifactError(f"{loaded.ref}: {ANOMALY_META} has unusable fill or width")
        return cls(forest, names, fill, center, width, loaded.ref)

    def artifacts(self) -> dict[str, object]:
        """The files this model adds to a model set."""
        return {
            ANOMALY_FILE: self.forest,
            ANOMALY_META: {
                "feature_names": list(self.feature_names),
                "fill": self.fill.tolist(),
                "center": self.center,
                "width": self.width,
                "calibration_quantile": CALIBRATION_QUANTILE,
            },
        }

    def describe(self) -> dict[str, object]:
        return {
            "detector": DETECTOR,
            "file": ANOMALY_FILE,
            "feature_names": list(self.feature_names),
            "calibration_quantile": CALIBRATION_QUANTILE,
        }

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores in [0, 1]; 0.5 for a vector as unusual as the calibration quantile."""
        if x.shape[0] == 0:
            return np.zeros(0)
        raw = -self.forest.score_samples(_filled(x, self.fill))
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-(raw - self.center) / self.width))


def log10_tail(score: np.ndarray) -> np.ndarray:
    """``log10`` tail probability of a score under the training distribution: the calibration
    quantile has ``1 - CALIBRATION_QUANTILE``, beyond it an exponential tail with the calibration
    width (the logit of the score counts widths); 0 for unscored readings (score 0)."""
    s = np.clip(score, 1e-12, 1.0 - 1e-12)
    widths = np.maximum(np.log(s / (1.0 - s)), 0.0)
    out = np.log10(1.0 - CALIBRATION_QUANTILE) - widths / np.log(10.0)
    return np.where(score > 0, np.minimum(out, 0.0), 0.0)


def _filled(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, fill[None, :])
