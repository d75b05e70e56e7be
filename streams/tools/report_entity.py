"""Per-entity data of a report, as compact JSON the page plots on demand.

A page with 1,000 entities must not draw 1,000 figures: each entity's data is one JSON document
(embedded in a ``<script type="application/json">`` the browser does not parse until the entity
is opened), and ``report.js`` draws the figure of the entity selected. Times are seconds from the
entity's first reading (``t0``, epoch ms); values keep five significant digits of the entity's
largest magnitude; missing values are ``null``. An entity with more than ``max_points`` readings
is thinned to every n-th point (forecast bands too); its anomaly markers are always all there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from streams.tools.report_fleet import LabelOutcome, entity_key, severity_rank
from streams.tools.report_input import ReportInput

DEFAULT_MAX_POINTS = 25_000
_KEY = ["entity_kind", "entity_id"]


@dataclass(frozen=True, slots=True)
class EntityData:
    key: str
    entity_kind: str
    entity_id: str
    readings: int
    events: int
    payload: bytes  # the JSON document report.js plots


def _digits(values: np.ndarray) -> int:
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    return 4 if top == 0 else int(min(10, max(0, 4 - math.floor(math.log10(top)))))


def _deltas(ts_ms: np.ndarray, t0: int) -> np.ndarray:
    """Seconds from ``t0``, each written as the difference from the one before."""
    return np.diff((ts_ms - t0) // 1000, prepend=0)


def _thin(n: int, max_points: int) -> slice:
    return slice(None, None, max(1, math.ceil(n / max_points)))


def hover_text(severity: str, score: float, detectors: dict, fired: list, explanation: list
               ) -> str:
    """What a marker says on hover: severity, score, detector scores, top explanation."""
    lines = [f"<b>{severity}</b> score {score:.3f}"]
    scores = sorted(((float(v), k) for k, v in (detectors or {}).items()), reverse=True)
    if scores:
        shown = ", ".join(f"{k}{'*' if k in (fired or ()) else ''} {v:.2f}" for v, k in scores[:6])
        lines.append(f"detectors: {shown}")
    for item in (explanation or [])[:3]:
        lines.append(
            f"{item.get('feature')}: {_num(item.get('value'))}, expected "
            f"{_num(item.get('expected'))}, deviation {_num(item.get('deviation'))}"
        )
    return "<br>".join(lines)


def _num(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, float | int) and not isinstance(x, bool) else str(x)


def _groups(frame: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    if frame.empty:
        return {}
    return {tuple(map(str, k)): v for k, v in frame.groupby(_KEY, sort=False).indices.items()}


def entity_data(inp: ReportInput, outcomes: list[LabelOutcome],
                max_points: int = DEFAULT_MAX_POINTS) -> Iterator[EntityData]:
    """Every entity with readings, in the order of its kind and id."""
    rd = inp.readings.sort_values(["entity_kind", "entity_id", "ts_ms"], kind="stable")
    rd = rd.reset_index(drop=True)
    fc = inp.forecasts.sort_values(["entity_kind", "entity_id", "horizon_s", "target_ms"],
                                   kind="stable").reset_index(drop=True)
    ev = inp.events.sort_values("ts_ms", kind="stable").reset_index(drop=True)
    fc_groups, ev_groups = _groups(fc), _groups(ev)
    labels: dict[tuple[str, str], list[LabelOutcome]] = {}
    for o in outcomes:
        labels.setdefault((o.label.entity_kind, o.label.entity_id), []).append(o)
    for key, rows in sorted(_groups(rd).items()):
        part = rd.iloc[rows]
        doc = _document(key, part, fc.iloc[fc_groups.get(key, [])], ev.iloc[ev_groups.get(key, [])],
                        labels.get(key, []), max_points)
        yield EntityData(entity_key(*key), key[0], key[1], len(part), len(ev_groups.get(key, [])),
                         orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def _document(key: tuple[str, str], rd: pd.DataFrame, fc: pd.DataFrame, ev: pd.DataFrame,
              labels: list[LabelOutcome], max_points: int) -> dict:
    ts = rd["ts_ms"].to_numpy(np.int64)
    values = rd["value"].to_numpy(np.float64)
    t0, digits = int(ts[0]), _digits(values)
    keep = _thin(len(ts), max_points)
    doc: dict = {
        "key": entity_key(*key), "kind": key[0], "id": key[1], "t0": t0,
        "t": _deltas(ts[keep], t0), "y": np.round(values[keep], digits), "f": [], "ev": None,
        "lab": [[o.label.start_ms, o.label.end_ms, o.label.kind, int(o.hit)] for o in labels],
    }
    for h, g in fc.groupby("horizon_s", sort=True):
        keep_f = _thin(len(g), max_points)
        doc["f"].append({
            "h": int(h), "t": _deltas(g["target_ms"].to_numpy(np.int64)[keep_f], t0),
            **{q: np.round(g[q].to_numpy(np.float64)[keep_f], digits)
               for q in ("p10", "p50", "p90")},
        })
    if len(ev):
        at = ev["ts_ms"].to_numpy(np.int64)
        pos = np.clip(np.searchsorted(ts, at), 0, len(ts) - 1)
        doc["ev"] = {
            "t": _deltas(at, t0), "y": np.round(values[pos], digits),
            "sev": severity_rank(ev["severity"]), "s": np.round(ev["score"].to_numpy(float), 3),
            "txt": [hover_text(*r) for r in zip(ev["severity"], ev["score"], ev["detectors"],
                                                ev["fired"], ev["explanation"], strict=True)],
        }
    return doc
