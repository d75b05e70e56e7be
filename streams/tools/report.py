"""``gridstream report``: one self-contained interactive HTML file of forecasts and anomalies.

Made from a backtest (``backtest --report``, the demo) or from ClickHouse (``gridstream report``),
both through ``ReportInput``. The page holds, with plotly.js inlined so it opens offline:

- per entity, drawn on demand: the actual load against the p50 nowcast with its p10-p90 band for
  each horizon (at the target time), anomaly markers coloured by severity with the score,
  detector scores and explanation on hover, labelled windows shaded as hit or missed;
- a fleet anomaly timeline (entities x time) and the top anomalous entities, linking to the plots;
- nowcast error: MAPE and WAPE by UTC hour of day x horizon, and p10-p90 coverage over time;
- with labels: every window, hit or missed, and the events outside every window.

Modules: ``report_input`` (sources, labels), ``report_fleet`` (fleet numbers and figures),
``report_entity`` (per-entity JSON), ``report_page`` (HTML), ``report.js`` (drawing in the page).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.io as pio

from streams.tools.report_entity import DEFAULT_MAX_POINTS, entity_data
from streams.tools.report_fleet import (
    coverage_figure,
    error_heatmap,
    error_summary,
    label_outcomes,
    match_actuals,
    timeline_figure,
    top_entities,
)
from streams.tools.report_input import ReportInput, ReportInputError
from streams.tools.report_page import error_table, labels_section, render, top_table


@dataclass(frozen=True, slots=True)
class ReportSummary:
    path: Path
    entities: int
    events: int
    labels: int
    labels_hit: int
    size_bytes: int
    seconds: float

    def line(self) -> str:
        labelled = (f", labelled windows hit {self.labels_hit}/{self.labels}"
                    if self.labels else "")
        return (f"report: {self.path} ({self.size_bytes / 1e6:.1f} MB, {self.entities:,} "
                f"entities, {self.events:,} anomaly events{labelled}) in {self.seconds:.1f} s")


def _meta(inp: ReportInput, span: tuple[int, int], n_entities: int) -> str:
    from streams.tools.report_page import _when

    sev = inp.events["severity"].value_counts()
    return html.escape(
        f"{inp.source}; {_when(span[0])} to {_when(span[1])}; {n_entities:,} entities, "
        f"{len(inp.readings):,} readings, {len(inp.forecasts):,} forecasts (horizons "
        f"{', '.join(f'{h} s' for h in inp.horizons_s) or 'none'}); anomaly events: critical "
        f"{sev.get('critical', 0):,}, warning {sev.get('warning', 0):,}, info "
        f"{sev.get('info', 0):,}"
    )


def write_report(
    inp: ReportInput, path: Path, max_points: int = DEFAULT_MAX_POINTS
) -> ReportSummary:
    """Write the report of ``inp`` to ``path`` (one HTML file) and say what is in it."""
    started = time.perf_counter()
    if inp.readings.empty:
        raise ReportInputError("there are no readings to report on")
    ts = inp.readings["ts_ms"].to_numpy(np.int64)
    span = (int(ts.min()), int(ts.max()))
    matched = match_actuals(inp)
    ranked = top_entities(inp.events)
    outcomes, false_alarms = label_outcomes(inp)
    entities = list(entity_data(inp, outcomes, max_points))
    figures = {
        "fig-timeline": timeline_figure(inp.events, ranked, span),
        "fig-error": error_heatmap(matched, inp.horizons_s),
        "fig-coverage": coverage_figure(matched, inp.horizons_s),
    }
    sections = {"top": top_table(ranked), "errors": error_table(error_summary(matched))}
    if outcomes:
        sections["labels"] = labels_section(outcomes, false_alarms)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for chunk in render(
            title=inp.title, meta=_meta(inp, span, len(entities)), sections=sections,
            fleet_figures={k: pio.to_json(f, engine="orjson") for k, f in figures.items()},
            entities=entities, first_entity=ranked[0].key if ranked else None,
        ):
            out.write(chunk)
    return ReportSummary(path, len(entities), len(inp.events), len(outcomes),
                         sum(o.hit for o in outcomes), path.stat().st_size,
                         time.perf_counter() - started)
