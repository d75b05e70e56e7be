"""The reports in a real browser: headless Chromium opens the file offline, the figures draw, the
page logs nothing, and a screenshot of it lands in ``benchmarks/results/report.png``; the same for
the validation report ``gridstream train`` writes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest

from models.params import ProcessorParams
from streams.cli import main
from streams.sim.generator import SimConfig, TelemetrySimulator
from streams.tools.backtest import backtest_values
from streams.tools.report import write_report
from streams.tools.report_input import BacktestCollector, load_labels
from tests.integration.browser import render, screenshot
from tests.unit.builders import daily_load

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_MS = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
DAYS = 6


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A backtest of six simulated days of 12 meters and 3 assets, with its labels file."""
    sim = TelemetrySimulator(
        SimConfig(meters=12, assets=3, seed=11, anomaly_rate_per_day=1.5), START_MS
    )
    tmp = tmp_path_factory.mktemp("report")
    values, contracts = [], []
    labels_file = tmp / "labels.jsonl"
    with labels_file.open("wb") as f:
        for t in range(START_MS + 3_600_000, START_MS + DAYS * 86_400_000 + 1, 3_600_000):
            batch = sim.step_until(t)
            values += batch.value
            contracts += batch.contract
            f.writelines(lab.model_dump_json().encode() + b"\n" for lab in batch.labels)
    collector = BacktestCollector()
    params = ProcessorParams()
    result = backtest_values(values, contracts, params, on_batch=collector)
    inp = collector.report_input("simulated grid", "backtest of the simulator, seed 11",
                                 params.horizons_s, result.events, load_labels(labels_file))
    assert inp.labels and len(inp.events), "the fixture needs labels and events to show"
    path = tmp / "report.html"
    summary = write_report(inp, path)
    worst = max(inp.labels, key=lambda lab: lab.end_ms - lab.start_ms)
    return summary.path, f"{worst.entity_kind}:{worst.entity_id}"


def test_the_report_opens_offline_with_nothing_fetched(report: tuple[Path, str]) -> None:
    text = report[0].read_text()
    start = text.index("<script id='plotly-js'>")
    plotly_js = text[start:text.index("</script>", start)]
    assert "Plotly" in plotly_js and len(plotly_js) > 1_000_000  # inlined, not linked
    ours = text.replace(plotly_js, "")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<img|https?://", ours)


def test_every_figure_draws_without_a_console_message(report: tuple[Path, str]) -> None:
    page, entity = report
    shown = render(page, "#entity=" + quote(entity, safe=""))
    dom = shown.dom
    assert shown.console == [], shown.console
    assert 'data-rendered="true"' in dom
    assert "data-js-errors" not in dom
    assert f'data-entity="{entity}"' in dom
    plot = dom[dom.index('id="entity-plot"'):dom.index('id="fleet"')]
    # three traces per horizon (p10, band, p50), the actual, and markers of some severity
    assert len(re.findall(r'class="trace scatter', plot)) >= 3 * 2 + 2
    assert "missed: " in plot or "hit: " in plot  # its labelled window is shaded and marked
    heatmaps = dom[dom.index('id="fig-timeline"'):]
    assert heatmaps.count('class="hm"') >= 3  # timeline, MAPE, WAPE
    coverage = dom[dom.index('id="fig-coverage"'):]
    assert 'class="trace scatter' in coverage


def test_another_entity_draws_on_demand(report: tuple[Path, str]) -> None:
    page, _ = report
    index = re.search(r'<option value="([^"]+)"', page.read_text())
    assert index is not None
    key = index.group(1).replace("&amp;", "&")
    dom = render(page, "#entity=" + quote(key, safe="")).dom
    assert f'data-entity="{key}"' in dom


def test_a_screenshot_shows_the_report(report: tuple[Path, str]) -> None:
    page, entity = report
    out = screenshot(page, REPO / "benchmarks/results/report.png",
                     "#entity=" + quote(entity, safe=""))
    assert out.stat().st_size > 50_000  # plots, not a blank page


def test_train_writes_a_validation_report_that_draws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cols = daily_load((("m1", "meter"), ("m2", "meter"), ("m3", "meter")), days=8.0, seed=3)
    pd.DataFrame({"meter_id": cols["entity"], "ts": cols["ts_ms"], "kw": cols["value"]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    assert main(["train", "--input", str(tmp_path / "history.csv"), "--output",
                 str(tmp_path / "store"), "--max-iter", "5"]) == 0
    found = re.search(r"validation report \(quantile calibration, error by horizon\): (\S+)",
                      capsys.readouterr().out)
    assert found is not None
    page = Path(found.group(1))
    assert page.parent == tmp_path / "store"  # beside the set, not inside it
    shown = render(page)
    assert shown.console == [] and 'data-rendered="true"' in shown.dom
    calibration = shown.dom[shown.dom.index('id="calibration"'):shown.dom.index('id="horizons"')]
    assert len(re.findall(r'class="trace scatter', calibration)) == 3  # diagonal + 2 horizons
    assert len(re.findall(r'class="trace bars', shown.dom)) == 2  # trained set, baseline
