"""How one artifact file is written and read, by its name's suffix.

``.skops`` (scikit-learn, through skops: no pickle; loading refuses any type outside
``SKOPS_TRUSTED``), ``.npy`` (numpy, no pickle), ``.json``, ``.pkl`` (pickle: only for sets
written before skops, and only after ``models.artifacts`` verified the bytes' sha256), anything
else raw bytes.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np

from models.exceptions import ArtifactError


def encode(rel: str, obj: object) -> bytes:
    """The bytes of artifact ``rel`` holding ``obj``."""
    if isinstance(obj, bytes):
        return obj
    suffix = Path(rel).suffix
    try:
        if suffix == ".skops":
            import skops.io as sio

            return sio.dumps(obj)
        if suffix == ".pkl":
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if suffix == ".npy" and isinstance(obj, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, obj, allow_pickle=False)
            return buf.getvalue()
        if suffix == ".json":
            return json.dumps(obj, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError, pickle.PicklingError) as exc:
        raise ArtifactError(f"artifact {rel!r} cannot be written as {suffix}: {exc}") from exc
    raise ArtifactError(
        f"artifact {rel!r}: a {type(obj).__name__} needs a .skops (scikit-learn) or .pkl name "
        "(.npy takes an ndarray, .json takes JSON values), or pass bytes"
    )


# Types skops does not trust by default that our models consist of: the fitted trees of
# HistGradientBoostingRegressor and of IsolationForest. Anything else in a file is refused.
SKOPS_TRUSTED: frozenset[str] = frozenset(
    {
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
    }
)


def decode(rel: str, data: bytes) -> object:
    """The object in the verified bytes of artifact ``rel``."""
    suffix = Path(rel).suffix
    if suffix == ".skops":
        import skops.io as sio  # on first use: it costs ~0.8 s of start-up otherwise

        untrusted = set(sio.get_untrusted_types(data=data))
        if untrusted - SKOPS_TRUSTED:
            raise ArtifactError(
                f"{rel}: holds types gridstream does not load: {sorted(untrusted - SKOPS_TRUSTED)}"
            )
        return sio.loads(data, trusted=sorted(untrusted))
    if suffix == ".pkl":
        return pickle.loads(data)  # noqa: S301 - sha256 of these exact bytes verified first
    if suffix == ".npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if suffix == ".json":
        return json.loads(data)
    return data
