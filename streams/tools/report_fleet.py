"""The fleet part of a report: numbers and plotly figures over every entity at once.

- Forecasts meet their actual by the analyst views' rule (``sinks.views``): the first reading of
  the entity at or after the target time, less than ``ACTUAL_TOLERANCE_S`` after it.
- MAPE skips actuals of magnitude under ``MIN_ABS_ACTUAL`` (as ``models.evaluation``); WAPE is
  the sum of absolute errors over the sum of absolute actuals, robust near zero.
- A labelled window is hit when an event of its entity falls in [start, end + grace]: the rule of
  ``models.evaluation.match_detections``, called per window so it is not written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from models.evaluation import Label, match_detections
from schemas.batch import AnomalyRecord
from sinks.views import ACTUAL_TOLERANCE_S
from streams.tools.backtest import SEVERITIES
from streams.tools.report_input import ReportInput

MIN_ABS_ACTUAL = 1e-3
DETECTION_GRACE_MS = 3_600_000  # an event up to an hour after a window still hits it
SEVERITY_COLOURS = {"info": "#e3b505", "warning": "#f07b05", "critical": "#d62728"}
TIMELINE_ROWS = 60
TIMELINE_BINS = 120


def entity_key(kind: object, entity: object) -> str:
    """The one text key of an entity in a report (its kind and id)."""
    return f"{kind}:{entity}"


def severity_rank(severity: pd.Series) -> np.ndarray:
    """0 info, 1 warning, 2 critical, -1 anything else."""
    ranks = {s: i for i, s in enumerate(SEVERITIES)}
    return np.array([ranks.get(s, -1) for s in severity], dtype=np.int64)


def match_actuals(inp: ReportInput) -> pd.DataFrame:
    """Forecasts with the actual reading at their target time (unmatched ones left out)."""
    fc, rd = inp.forecasts, inp.readings
    if fc.empty or rd.empty:
        return fc.assign(actual=pd.Series(dtype=float))
    left = fc.astype({"target_ms": np.int64}).sort_values("target_ms", kind="stable")
    right = rd[["entity_kind", "entity_id", "ts_ms", "value"]].astype({"ts_ms": np.int64})
    right = right[np.isfinite(right["value"].to_numpy(float))].sort_values("ts_ms", kind="stable")
    out = pd.merge_asof(
        left, right, left_on="target_ms", right_on="ts_ms", by=["entity_kind", "entity_id"],
        direction="forward", tolerance=ACTUAL_TOLERANCE_S * 1000 - 1,
    )
    out = out.rename(columns={"value": "actual"}).drop(columns="ts_ms")
    return out[np.isfinite(out["actual"].to_numpy(float)) & np.isfinite(out["p50"].to_numpy(float))]


def error_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Per horizon: n, MAE, MAPE %, WAPE %, p10-p90 coverage %."""
    rows = []
    for h, g in matched.groupby("horizon_s"):
        rows.append({"horizon_s": int(h), "n": len(g), **_errors(g)})
    return pd.DataFrame(rows, columns=["horizon_s", "n", "mae", "mape", "wape", "coverage"])


def _errors(g: pd.DataFrame) -> dict[str, float]:
    actual, p50 = g["actual"].to_numpy(float), g["p50"].to_numpy(float)
    err = np.abs(actual - p50)
    away = np.abs(actual) >= MIN_ABS_ACTUAL
    total = np.abs(actual).sum()
    inside = (actual >= g["p10"].to_numpy(float)) & (actual <= g["p90"].to_numpy(float))
    return {
        "mae": float(err.mean()) if len(g) else np.nan,
        "mape": float(100 * (err[away] / np.abs(actual[away])).mean()) if away.any() else np.nan,
        "wape": float(100 * err.sum() / total) if total else np.nan,
        "coverage": float(100 * inside.mean()) if len(g) else np.nan,
    }


def error_heatmap(matched: pd.DataFrame, horizons_s: tuple[int, ...]) -> go.Figure:
    """MAPE and WAPE by UTC hour of the target time (x) and horizon (y)."""
    hours = (matched["target_ms"].to_numpy(np.int64) // 3_600_000) % 24
    grouped = matched.assign(hour=hours).groupby(["horizon_s", "hour"])
    cells = {key: _errors(g) for key, g in grouped}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("MAPE %", "WAPE %"),
                        horizontal_spacing=0.12)
    labels = [f"{h // 60} min" if h < 3600 else f"{h / 3600:g} h" for h in horizons_s]
    for col, metric in enumerate(("mape", "wape"), start=1):
        z = [[_round(cells.get((h, hr), {}).get(metric)) for hr in range(24)] for h in horizons_s]
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(24)), y=labels, colorscale="YlOrRd", name=metric.upper(),
            colorbar={"x": 0.44 if col == 1 else 1.0, "len": 0.9, "title": "%"},
            hovertemplate="hour %{x}:00 UTC, horizon %{y}: %{z:.2f} %<extra>" + metric.upper()
            + "</extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="hour of day (UTC) of the target", dtick=3, row=1, col=col)
    fig.update_yaxes(type="category")
    fig.update_layout(height=300, margin={"t": 40, "b": 50, "l": 70, "r": 20})
    return fig


def _round(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 3)


def coverage_figure(matched: pd.DataFrame, horizons_s: tuple[int, ...]) -> go.Figure:
    """Share of actuals inside p10-p90 per time bin (a day, or an hour on short spans)."""
    fig = go.Figure()
    if not matched.empty:
        ts = matched["target_ms"].to_numpy(np.int64)
        span = int(ts.max() - ts.min())
        step = 86_400_000 if span > 4 * 86_400_000 else 3_600_000
        inside = (matched["actual"] >= matched["p10"]) & (matched["actual"] <= matched["p90"])
        table = matched.assign(bin=ts // step * step, inside=inside.astype(float))
        for h in horizons_s:
            cov = table[table["horizon_s"] == h].groupby("bin")["inside"].agg(["mean", "size"])
            if len(cov) and (cov.index[-1] - cov.index[0]) // step < 5000:  # gaps break the line
                cov = cov.reindex(range(cov.index[0], cov.index[-1] + 1, step))
            fig.add_trace(go.Scatter(
                x=cov.index.to_numpy(), y=(100 * cov["mean"]).round(2).to_numpy(),
                customdata=cov["size"].to_numpy(), mode="lines+markers", name=f"{h} s",
                hovertemplate="%{x}: %{y:.1f} % of %{customdata} forecasts<extra>%{fullData.name}"
                "</extra>",
            ))
    fig.add_hline(y=80, line_dash="dash", line_color="grey",
                  annotation_text="80 % (calibrated p10-p90)", annotation_position="bottom right")
    fig.update_layout(height=280, margin={"t": 20, "b": 40, "l": 60, "r": 20},
                      xaxis={"type": "date", "title": "target time (UTC)"},
                      yaxis={"title": "actuals inside p10-p90 (%)", "range": [0, 100]},
                      legend={"title": "horizon"})
    return fig


@dataclass(frozen=True, slots=True)
class EntityRank:
    key: str
    entity_kind: str
    entity_id: str
    events: int
    critical: int
    warning: int
    info: int
    max_score: float
    top_kind: str


def top_entities(events: pd.DataFrame) -> list[EntityRank]:
    """Entities with events, critical first, then by number of events and top score."""
    if events.empty:
        return []
    rank = severity_rank(events["severity"])
    kinds = [x[0]["feature"] if len(x) else "unexplained" for x in events["explanation"]]
    table = events.assign(rank=rank, kind=kinds)
    out = []
    for (k, e), g in table.groupby(["entity_kind", "entity_id"], sort=False):
        counts = np.bincount(g["rank"].to_numpy()[g["rank"].to_numpy() >= 0], minlength=3)
        out.append(EntityRank(entity_key(k, e), str(k), str(e), len(g), int(counts[2]),
                              int(counts[1]), int(counts[0]), float(g["score"].max()),
                              str(g["kind"].mode().iloc[0])))
    out.sort(key=lambda r: (-r.critical, -r.events, -r.max_score, r.key))
    return out


def timeline_figure(events: pd.DataFrame, ranked: list[EntityRank], span: tuple[int, int]
                    ) -> go.Figure:
    """Entities (the most anomalous ``TIMELINE_ROWS``) x time: the worst severity per cell."""
    rows = ranked[:TIMELINE_ROWS][::-1]  # the worst at the top
    start, end = span
    step = max((end - start) // TIMELINE_BINS + 1, 60_000)
    edges = start + step * np.arange(TIMELINE_BINS + 1)
    z = np.full((len(rows), TIMELINE_BINS), np.nan)
    index = {r.key: i for i, r in enumerate(rows)}
    keys = [entity_key(k, e) for k, e in zip(events["entity_kind"], events["entity_id"],
                                              strict=True)]
    col = np.clip((events["ts_ms"].to_numpy(np.int64) - start) // step, 0, TIMELINE_BINS - 1)
    for key, c, r in zip(keys, col, severity_rank(events["severity"]) + 1, strict=True):
        i = index.get(key)
        if i is not None and r > 0:
            z[i, c] = np.fmax(z[i, c], r)
    scale = [[0, SEVERITY_COLOURS["info"]], [0.33, SEVERITY_COLOURS["info"]],
             [0.34, SEVERITY_COLOURS["warning"]], [0.66, SEVERITY_COLOURS["warning"]],
             [0.67, SEVERITY_COLOURS["critical"]], [1, SEVERITY_COLOURS["critical"]]]
    fig = go.Figure(go.Heatmap(
        z=np.where(np.isnan(z), None, z).tolist(), x=edges[:-1] + step // 2,
        y=[r.entity_id for r in rows], customdata=[[r.key] * TIMELINE_BINS for r in rows],
        zmin=0.5, zmax=3.5, colorscale=scale, xgap=1, ygap=1, hoverongaps=False,
        colorbar={"tickvals": [1, 2, 3], "ticktext": list(SEVERITIES), "len": 0.6},
        hovertemplate="%{y}<br>%{x}<br>worst: %{z}<extra>click to plot</extra>",
    ))
    fig.update_layout(height=max(220, 60 + 16 * len(rows)),
                      margin={"t": 10, "b": 40, "l": 160, "r": 20},
                      xaxis={"type": "date"}, yaxis={"type": "category", "automargin": True})
    return fig


@dataclass(frozen=True, slots=True)
class LabelOutcome:
    label: Label
    hit: bool


def label_outcomes(inp: ReportInput, grace_ms: int = DETECTION_GRACE_MS
                   ) -> tuple[list[LabelOutcome], int]:
    """Each labelled window that starts within the readings' span, with whether an event hit it,
    and the events that hit no window (windows after the last reading are not yet judged)."""
    if not inp.labels or inp.readings.empty:
        return [], 0
    ts = inp.readings["ts_ms"].to_numpy(np.int64)
    first, last = int(ts.min()), int(ts.max())
    labels = [lab for lab in inp.labels if first <= lab.start_ms <= last]
    records = [AnomalyRecord("", str(r.entity_id), str(r.entity_kind), int(r.ts_ms), 0.0, "",
                             {}, [], [], {}, {}, 0) for r in inp.events.itertuples()]
    by_entity: dict[tuple[str, str], list[AnomalyRecord]] = {}
    for rec in records:
        by_entity.setdefault((rec.entity_kind, rec.entity_id), []).append(rec)
    outcomes = []
    for lab in labels:
        near = by_entity.get((lab.entity_kind, lab.entity_id), [])
        outcomes.append(LabelOutcome(lab, match_detections(near, [lab], grace_ms).detected > 0))
    true_events = match_detections(records, labels, grace_ms).true_events
    return outcomes, len(records) - true_events
