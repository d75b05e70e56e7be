"""The report's HTML: one file, plotly.js and ``report.js`` inlined, nothing fetched at view time.

JSON embedded in ``<script>`` elements has every ``</`` written ``<\\/`` (the same string in
JSON), so no text in the data can close the element early. Text in the HTML is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd
from plotly.offline import get_plotlyjs

from streams.tools.report_entity import EntityData
from streams.tools.report_fleet import EntityRank, LabelOutcome

TOP_ROWS = 100
LABEL_ROWS = 200
_JS = Path(__file__).with_name("report.js")
_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 16px;
       color: #1d1d1d; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 17px; margin: 26px 0 6px; }
.meta { color: #555; margin: 0 0 8px; } nav a { margin-right: 14px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 9px; text-align: right; }
th { border-bottom: 1px solid #999; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #f5f5f5; } .scroll { max-height: 330px; overflow-y: auto; }
.sev-critical { color: #d62728; font-weight: 600; } .sev-warning { color: #c46200; }
.hit { color: #2c7a2c; } .miss { color: #b21f1f; } .note { color: #666; font-size: 12px; }
select { font-size: 14px; max-width: 420px; }
"""
_ERRORS = (
    "window.__reportErrors = [];"
    "window.addEventListener('error', function (e) { window.__reportErrors.push(String(e.message));"
    " document.documentElement.dataset.jsErrors = String(window.__reportErrors.length); });"
)


def script_json(doc: object | bytes, element_id: str) -> str:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    body = raw.decode().replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{body}</script>'


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _link(key: str, text: str) -> str:
    from urllib.parse import quote

    return f'<a href="#entity={quote(key, safe="")}">{html.escape(text)}</a>'


def top_table(ranked: list[EntityRank]) -> str:
    if not ranked:
        return "<p>No anomaly events.</p>"
    head = ("<tr><th>entity</th><th>kind</th><th>events</th><th>critical</th><th>warning</th>"
            "<th>info</th><th>max score</th><th>most frequent explanation</th></tr>")
    rows = [
        f"<tr><td>{_link(r.key, r.entity_id)}</td><td>{html.escape(r.entity_kind)}</td>"
        f"<td>{r.events}</td><td class='sev-critical'>{r.critical}</td>"
        f"<td class='sev-warning'>{r.warning}</td><td>{r.info}</td><td>{r.max_score:.3f}</td>"
        f"<td>{html.escape(r.top_kind)}</td></tr>"
        for r in ranked[:TOP_ROWS]
    ]
    more = (f"<p class='note'>{len(ranked) - TOP_ROWS} more entities with events: "
            "choose them above.</p>" if len(ranked) > TOP_ROWS else "")
    return f"<div class='scroll'><table>{head}{''.join(rows)}</table></div>{more}"


def error_table(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "<p>No forecast has met its actual reading yet.</p>"
    head = ("<tr><th>horizon</th><th>forecasts with actual</th><th>MAPE %</th><th>WAPE %</th>"
            "<th>MAE</th><th>p10-p90 coverage %</th></tr>")
    rows = [
        f"<tr><td>{r.horizon_s} s</td><td>{r.n:,}</td><td>{r.mape:.2f}</td><td>{r.wape:.2f}</td>"
        f"<td>{r.mae:.4g}</td><td>{r.coverage:.1f}</td></tr>"
        for r in summary.itertuples()
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def labels_section(outcomes: list[LabelOutcome], false_alarms: int) -> str:
    if not outcomes:
        return ""
    hits = sum(o.hit for o in outcomes)
    rows = [
        f"<tr><td>{_link(f'{o.label.entity_kind}:{o.label.entity_id}', o.label.entity_id)}</td>"
        f"<td>{html.escape(o.label.kind)}</td><td>{_when(o.label.start_ms)}</td>"
        f"<td>{_when(o.label.end_ms)}</td>"
        f"<td class='{'hit' if o.hit else 'miss'}'>{'hit' if o.hit else 'missed'}</td></tr>"
        for o in sorted(outcomes, key=lambda o: (o.hit, o.label.start_ms))[:LABEL_ROWS]
    ]
    head = "<tr><th>entity</th><th>label</th><th>from</th><th>to</th><th></th></tr>"
    return (
        "<section id='labels'><h2>Labelled windows</h2>"
        f"<p>{len(outcomes):,} windows: <span class='hit'>{hits:,} hit</span>, "
        f"<span class='miss'>{len(outcomes) - hits:,} missed</span>; {false_alarms:,} events "
        "outside every window (an event up to an hour after a window's end still hits it). "
        "In the entity plot, hit windows are shaded green and missed ones red.</p>"
        f"<div class='scroll'><table>{head}{''.join(rows)}</table></div></section>"
    )


def entity_options(entities: list[EntityData]) -> str:
    return "".join(
        f'<option value="{html.escape(e.key)}">{html.escape(e.entity_id)} '
        f"({html.escape(e.entity_kind)}, {e.events} events)</option>"
        for e in entities
    )


def render(
    *, title: str, meta: str, sections: dict[str, str], fleet_figures: dict[str, str],
    entities: list[EntityData], first_entity: str | None,
) -> Iterable[str]:
    """The page as chunks of text (the per-entity JSON is most of it)."""
    index = [[e.key, e.entity_kind, e.entity_id, e.readings, e.events] for e in entities]
    figures = "{" + ",".join(f'"{k}":{v}' for k, v in fleet_figures.items()) + "}"
    first = f' data-first-entity="{html.escape(first_entity)}"' if first_entity else ""
    yield (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
           f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_ERRORS}</script>")
    yield f"<script id='plotly-js'>{get_plotlyjs()}</script></head><body{first}>"
    yield (f"<h1>{html.escape(title)}</h1><p class='meta'>{meta}</p><nav>"
           "<a href='#entity'>entity</a><a href='#fleet'>fleet timeline</a>"
           "<a href='#top'>top entities</a><a href='#error'>nowcast error</a>"
           + ("<a href='#labels'>labelled windows</a>" if "labels" in sections else "")
           + "</nav>")
    yield ("<section id='entity'><h2>Entity: actual against the nowcast</h2>"
           f"<label>entity <select id='entity-select'>{entity_options(entities)}</select></label>"
           " <span class='note'>the first horizon is shown; click a horizon in the legend to add"
           " it. Markers are anomaly events, coloured by severity (hover: score, detectors, "
           "explanation; * = fired).</span><div id='entity-plot'></div></section>")
    yield ("<section id='fleet'><h2>Fleet anomaly timeline</h2><p class='note'>the most "
           "anomalous entities, worst severity per time bin; click a cell to plot the entity."
           "</p><div id='fig-timeline'></div></section>")
    yield f"<section id='top'><h2>Top anomalous entities</h2>{sections['top']}</section>"
    yield (f"<section id='error'><h2>Nowcast error</h2>{sections['errors']}"
           "<div id='fig-error'></div><h2>Interval coverage over time</h2>"
           "<div id='fig-coverage'></div></section>")
    yield sections.get("labels", "")
    yield script_json(figures.encode(), "fleet-figures")
    yield script_json(index, "entity-index")
    for i, e in enumerate(entities):
        yield script_json(e.payload, f"e-{i}")
    yield f"<script>{_JS.read_text()}</script></body></html>"
