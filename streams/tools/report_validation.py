"""``gridstream train``'s validation report: how well calibrated the quantiles are, and the
error by horizon, of the set just trained, in one self-contained HTML file.

The set is replayed over the training input by the processor, exactly as it is served, and
judged on the last ``HELD_OUT`` of the time span (training holds the same share out for its gate
and every metric it reports); the training metrics (held-out MAE against the baseline's, p10-p90
coverage) are shown beside. Calibrated quantiles put 10 %, 50 % and 90 % of the actuals below
p10, p50 and p90. The file goes beside the model set, not into it: a set's directory holds only
what its manifest lists.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from models.ensemble import load_ensemble
from models.params import ProcessorParams
from models.processor import GridProcessor
from schemas.batch import ReadingBatch
from streams.tools.report_fleet import error_summary, match_actuals
from streams.tools.report_input import BacktestCollector
from streams.tools.report_page import error_table, script_json

HELD_OUT = 0.2
NOMINAL = (("p10", 10), ("p50", 50), ("p90", 90))
_DRAW = (
    "var f = JSON.parse(document.getElementById('figures').textContent);"
    "Promise.all(Object.keys(f).map(function (id) {"
    " return Plotly.newPlot(id, f[id].data, f[id].layout, {responsive: true}); }))"
    ".then(function () { document.body.dataset.rendered = 'true'; });"
)


def replay(batches: Sequence[ReadingBatch], params: ProcessorParams, model_set: Path
           ) -> BacktestCollector:
    """The forecasts the trained set makes when served over ``batches``, and the readings."""
    ensemble = load_ensemble(model_set)
    params = replace(params, horizons_s=tuple(sorted(set(params.horizons_s)
                                                     | set(ensemble.horizons))))
    processor = GridProcessor(params, ensemble=ensemble)
    now_ms = max(int(b.ts_ms.max()) for b in batches if len(b)) + 1
    collector = BacktestCollector()
    for batch in batches:
        if len(batch):
            collector(batch, processor.process_batch(batch, now_ms))
    return collector


def calibration(held: pd.DataFrame) -> pd.DataFrame:
    """Per horizon and quantile: the share of actuals below it, in percent."""
    rows = []
    for h, g in held.groupby("horizon_s"):
        actual = g["actual"].to_numpy(float)
        for name, nominal in NOMINAL:
            below = float(100 * np.mean(actual < g[name].to_numpy(float)))
            rows.append({"horizon_s": int(h), "quantile": name, "nominal": nominal,
                         "observed": round(below, 2), "n": len(g)})
    return pd.DataFrame(rows, columns=["horizon_s", "quantile", "nominal", "observed", "n"])


def calibration_figure(cal: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="calibrated",
                               line={"dash": "dash", "color": "grey"}))
    for h, g in cal.groupby("horizon_s"):
        fig.add_trace(go.Scatter(
            x=g["nominal"], y=g["observed"], mode="lines+markers", name=f"{h} s ahead",
            text=g["quantile"], hovertemplate="%{text}: %{y:.1f} % of actuals below<extra>"
            "%{fullData.name}</extra>",
        ))
    fig.update_layout(height=380, width=520, margin={"t": 20, "b": 50, "l": 60, "r": 20},
                      xaxis={"title": "quantile (%)", "range": [0, 100], "dtick": 10},
                      yaxis={"title": "actuals below it (%)", "range": [0, 100], "dtick": 10})
    return fig


def horizon_figure(metrics: dict[str, float], horizons_s: Sequence[int]) -> go.Figure:
    """Held-out MAE of the trained set against the online baseline's, per horizon."""
    labels = [f"{h} s" for h in horizons_s]
    fig = go.Figure()
    for key, name in (("validation_mae", "trained set"), ("baseline_mae", "online baseline")):
        fig.add_trace(go.Bar(x=labels, y=[metrics.get(f"h{h}_{key}") for h in horizons_s],
                             name=name, hovertemplate="%{y:.4g}<extra>" + name + "</extra>"))
    fig.update_layout(height=380, width=520, barmode="group",
                      margin={"t": 20, "b": 50, "l": 60, "r": 20},
                      xaxis={"title": "horizon"}, yaxis={"title": "held-out MAE"})
    return fig


def write_validation_report(batches: Sequence[ReadingBatch], params: ProcessorParams,
                            model_set: Path, metrics: dict[str, float], out: Path) -> Path:
    started = time.perf_counter()
    inp = replay(batches, params, model_set).report_input(model_set.name, "", (), [])
    matched = match_actuals(inp)
    ts = inp.readings["ts_ms"].to_numpy(np.int64)
    split = int(ts.min() + (1 - HELD_OUT) * (ts.max() - ts.min()))
    held = matched[matched["target_ms"].to_numpy(np.int64) >= split]
    horizons = sorted(int(h) for h in held["horizon_s"].unique())
    figures = {"calibration": calibration_figure(calibration(held)),
               "horizons": horizon_figure(metrics, horizons)}
    body = (
        f"<h1>Validation of {html.escape(model_set.name)}</h1><p>Replayed as served over the "
        f"training input ({len(ts):,} readings); judged on the held-out last "
        f"{100 * HELD_OUT:.0f} % of the time span ({len(held):,} forecasts with their actual)."
        "</p><h2>Quantile calibration</h2><div id='calibration'></div><h2>Error by horizon</h2>"
        f"{error_table(error_summary(held))}<div id='horizons'></div>"
        f"<p>Generated in {time.perf_counter() - started:.1f} s.</p>"
    )
    doc = {k: orjson.Fragment(pio.to_json(f, engine="orjson")) for k, f in figures.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>"
        f"{html.escape(model_set.name)} validation</title><style>body {{ font: 14px system-ui, "
        "sans-serif; margin: 16px; }} table {{ border-collapse: collapse; }} td, th {{ padding: "
        f"2px 8px; text-align: right; }}</style><script>{get_plotlyjs()}</script></head><body>"
        f"{body}{script_json(orjson.dumps(doc), 'figures')}<script>{_DRAW}</script></body></html>",
        encoding="utf-8",
    )
    return out
