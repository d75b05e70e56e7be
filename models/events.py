"""Anomaly events: the few readings above threshold become records with an explanation.

Only emitted readings reach this module, so it may loop in Python.
"""

from __future__ import annotations

import numpy as np

from models.detectors import DETECTORS
from models.params import ProcessorParams
from schemas.batch import AnomalyRecord, ReadingBatch
from schemas.outputs import SEVERITIES, stable_id

# Contract field names per batch column, for meters and SCADA assets.
_METER_FIELDS = {"value": "kw", "reactive": "kvar", "voltage": "voltage_v", "current": "current_a"}
_SCADA_FIELDS = {
    "value": "p_mw",
    "reactive": "q_mvar",
    "voltage": "voltage_kv",
    "current": "current_a",
    "frequency": "frequency_hz",
    "temperature": "temperature_c",
}
_CHANNEL_COLUMNS = ("reactive", "voltage", "current", "frequency", "temperature")
TOP_FEATURES = 3


def event_id(kind: str, entity: str, ts_ms: int) -> str:
    """Same reading, same id: a subscriber or ClickHouse drops a redelivered event by it."""
    return stable_id("anomaly", kind, entity, ts_ms)


def reading_dict(batch: ReadingBatch, row: int) -> dict[str, float | str | None]:
    """The reading as its producer sent it (contract field names, absent channels left out)."""
    kind = str(batch.kind[row])
    meter = kind == "meter"
    names = _METER_FIELDS if meter else _SCADA_FIELDS
    out: dict[str, float | str | None] = {
        "meter_id" if meter else "asset_id": str(batch.entity[row])
    }
    if not meter:
        out["asset_kind"] = kind
    out["ts"] = int(batch.ts_ms[row])
    for column, name in names.items():
        value = float(getattr(batch, column)[row])
        if np.isfinite(value):
            out[name] = value
    if batch.quality[row] is not None:
        out["quality"] = str(batch.quality[row])
    return out


def _explain(
    batch: ReadingBatch,
    row: int,
    j: int,
    feats: dict[str, np.ndarray],
    state_chan: np.ndarray | None,
) -> list[dict[str, float | str | None]]:
    kind = str(batch.kind[row])
    names = _METER_FIELDS if kind == "meter" else _SCADA_FIELDS
    value = float(batch.value[row])
    candidates: list[dict[str, float | str | None]] = [
        {
            "feature": names["value"],
            "value": value,
            "expected": _num(feats["expected"][j]),
            "deviation": float(feats["z"][j]),
        },
    ]
    if feats["prof_seen"][j]:
        candidates.append(
            {
                "feature": f"{names['value']}_vs_time_of_day",
                "value": value,
                "expected": _num(feats["prof"][j]),
                "deviation": float(feats["zs"][j]),
            }
        )
    if feats["run"][j] > 0:
        candidates.append(
            {
                "feature": "identical_readings",
                "value": float(feats["run"][j] + 1),
                "expected": 1.0,
                "deviation": float(feats["run"][j]),
            }
        )
    for k, column in enumerate(_CHANNEL_COLUMNS):
        name = names.get(column)
        x = float(getattr(batch, column)[row])
        if name is None or not np.isfinite(x):
            continue
        expected = None if state_chan is None else _num(state_chan[k])
        candidates.append(
            {
                "feature": name,
                "value": x,
                "expected": expected,
                "deviation": float(feats["zc"][j, k]),
            }
        )
    model_score = feats.get("iforest")
    if model_score is not None and model_score[j] >= 0.5:
        s = float(min(model_score[j], 1.0 - 1e-12))
        candidates.append(
            {
                # the batch anomaly model: deviation in calibration widths beyond the training
                # quantile (models.batch_anomaly), so it ranks with the z-like deviations
                "feature": "iforest_anomaly_score",
                "value": s,
                "expected": 0.5,
                "deviation": float(np.log(s / (1.0 - s))),
            }
        )
    candidates.sort(key=lambda f: -abs(float(f["deviation"] or 0.0)))
    return candidates[:TOP_FEATURES]


def _num(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def build_events(
    batch: ReadingBatch,
    rows: np.ndarray,
    idx: np.ndarray,
    fused: np.ndarray,
    rank: np.ndarray,
    scores: dict[str, np.ndarray],
    feats: dict[str, np.ndarray],
    params: ProcessorParams,
    model_versions: dict[str, str],
    now_ms: int,
) -> list[AnomalyRecord]:
    """Events for round positions ``idx`` (``rows[idx]`` are batch rows), in batch order."""
    events: list[AnomalyRecord] = []
    thresholds = dict(params.severity_thresholds)
    fire_at = thresholds["info"]
    state_chan = feats.get("chan_mean")
    # the online detectors, then any loaded model's (the batch anomaly model) in fusion order
    names = [*(n for n in DETECTORS if n in scores), *(n for n in scores if n not in DETECTORS)]
    for j in idx:
        row = int(rows[j])
        kind = str(batch.kind[row])
        entity = str(batch.entity[row])
        ts = int(batch.ts_ms[row])
        per_detector = {name: round(float(scores[name][j]), 4) for name in names}
        events.append(
            AnomalyRecord(
                event_id=event_id(kind, entity, ts),
                entity_id=entity,
                entity_kind=kind,
                ts_ms=ts,
                score=round(float(fused[j]), 4),
                severity=SEVERITIES[int(rank[j])],
                detectors=per_detector,
                fired=[name for name, sc in per_detector.items() if sc >= fire_at],
                explanation=_explain(
                    batch, row, int(j), feats, None if state_chan is None else state_chan[j]
                ),
                reading=reading_dict(batch, row),
                model_versions=dict(model_versions),
                detected_ms=now_ms,
            )
        )
    return events
