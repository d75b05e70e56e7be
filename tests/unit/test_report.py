"""The report's pure parts: labels, matching, per-entity JSON, the page and the validation page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.evaluation import Label
from models.training import train_model_set
from streams.config import ConfigError
from streams.tools.report import write_report
from streams.tools.report_entity import entity_data, hover_text
from streams.tools.report_fleet import label_outcomes, match_actuals
from streams.tools.report_input import (
    READING_COLUMNS,
    ReportInput,
    ReportInputError,
    events_frame,
    load_labels,
    since_ms,
)
from streams.tools.report_validation import write_validation_report
from tests.unit.builders import daily_load, to_batch
from tests.unit.test_training import ENTITIES, P, pieces

T0 = 1_700_000_000_000 // 900_000 * 900_000
STEP = 900_000


def _input(n: int = 40, events: list[tuple[str, int, str]] = (), labels: tuple = (),
           entity: str = "m-1") -> ReportInput:
    ts = T0 + STEP * np.arange(n)
    readings = pd.DataFrame({"entity_kind": "meter", "entity_id": entity, "ts_ms": ts,
                             "value": 1.0 + np.sin(np.arange(n))}, columns=list(READING_COLUMNS))
    forecasts = pd.DataFrame({"entity_kind": "meter", "entity_id": entity, "horizon_s": 900,
                              "target_ms": ts + STEP, "p10": 0.5, "p50": 1.0, "p90": 1.5})
    ev = pd.DataFrame({
        "entity_kind": "meter", "entity_id": [e for e, _, _ in events],
        "ts_ms": [T0 + STEP * k for _, k, _ in events], "score": 0.95,
        "severity": [s for _, _, s in events],
        "detectors": [{"residual": 0.9, "stuck": 0.1}] * len(events),
        "fired": [["residual"]] * len(events),
        "explanation": [[{"feature": "kw", "value": 9.0, "expected": 1.0, "deviation": 8.0}]]
        * len(events),
    })
    return ReportInput("t", "test", (900,), readings, forecasts, ev, tuple(labels))


def test_labels_load_from_simulator_lines_and_nab_windows(tmp_path: Path) -> None:
    sim = tmp_path / "sim.jsonl"
    sim.write_text(
        '{"entity_id": "m-1", "entity_kind": "meter", "kind": "spike", '
        '"start_ts": "2024-03-04T00:00:00Z", "end_ts": "2024-03-04T00:15:00+00:00"}\n' * 2
    )
    (a, b) = load_labels(sim)
    assert a == b == Label("m-1", "meter", "spike", 1_709_510_400_000, 1_709_511_300_000)
    nab = tmp_path / "windows.json"
    nab.write_text(json.dumps({"realTraffic/speed_1.csv": [["2015-09-01 00:00:00.000000",
                                                             "2015-09-02 00:00:00.000000"]],
                               "artificialNoAnomaly/flat.csv": []}, indent=1))
    (w,) = load_labels(nab)
    assert (w.entity_id, w.entity_kind, w.kind) == ("realTraffic/speed_1", "meter", "nab_window")
    assert w.end_ms - w.start_ms == 86_400_000
    bad = tmp_path / "bad.txt"
    bad.write_text("not json")
    with pytest.raises(ReportInputError, match="neither simulator nor NAB"):
        load_labels(bad)
    with pytest.raises(ReportInputError, match="cannot read"):
        load_labels(tmp_path / "absent.json")


def test_windows_are_hit_or_missed_and_other_events_are_false_alarms() -> None:
    hit = Label("m-1", "meter", "spike", T0 + 10 * STEP, T0 + 11 * STEP)
    late_hit = Label("m-1", "meter", "drift", T0 + 20 * STEP, T0 + 21 * STEP)  # within grace
    missed = Label("m-1", "meter", "stuck", T0 + 30 * STEP, T0 + 31 * STEP)
    beyond = Label("m-1", "meter", "spike", T0 + 99 * STEP, T0 + 100 * STEP)  # after the data
    inp = _input(events=[("m-1", 10, "critical"), ("m-1", 24, "info"), ("m-1", 36, "warning")],
                 labels=(hit, late_hit, missed, beyond))
    outcomes, false_alarms = label_outcomes(inp)
    assert [(o.label.kind, o.hit) for o in outcomes] == [
        ("spike", True), ("drift", True), ("stuck", False)]
    assert false_alarms == 1


def test_a_forecast_meets_the_first_reading_less_than_a_minute_after_its_target() -> None:
    inp = _input(n=3)
    inp.readings.loc[1, "ts_ms"] += 59_999
    inp.readings.loc[2, "ts_ms"] += 60_000
    matched = match_actuals(inp)
    assert matched["target_ms"].tolist() == [T0 + STEP]  # the last has no reading at all


def test_entity_json_is_compact_thinned_and_keeps_every_marker() -> None:
    inp = _input(n=1000, events=[("m-1", k, "warning") for k in (1, 2, 3, 777)])
    (entity,) = entity_data(inp, [], max_points=100)
    doc = json.loads(entity.payload)
    # every 10th reading; times in seconds from t0, each as the difference from the one before
    assert len(doc["t"]) == 100 and doc["t"][:2] == [0, 10 * STEP // 1000]
    assert len(doc["f"][0]["p50"]) == 100
    assert np.cumsum(doc["ev"]["t"]).tolist() == [k * STEP // 1000 for k in (1, 2, 3, 777)]
    assert doc["ev"]["sev"] == [1, 1, 1, 1]
    text = hover_text("critical", 0.97, {"residual": 0.9, "stuck": 0.2}, ["residual"],
                      [{"feature": "kw", "value": 9.0, "expected": 1.0, "deviation": 8.0}])
    assert "residual* 0.90" in text and "stuck 0.20" in text and "kw: 9, expected 1" in text


def test_the_page_is_one_file_whose_data_cannot_close_its_script(tmp_path: Path) -> None:
    sneaky = "m</script><script>alert(1)</script>"
    inp = _input(events=[(sneaky, 3, "critical")], entity=sneaky)
    summary = write_report(inp, tmp_path / "r.html")
    page = summary.path.read_text()
    assert "alert(1)</script>" not in page  # the data's "</" is written "<\\/"
    blocks = re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', page,
                        re.S)
    assert {b[0] for b in blocks} == {"fleet-figures", "entity-index", "e-0"}
    index = json.loads(dict(blocks)["entity-index"])
    assert index == [[f"meter:{sneaky}", "meter", sneaky, 40, 1]]
    assert summary.entities == 1 and summary.events == 1


def test_an_empty_input_is_refused(tmp_path: Path) -> None:
    inp = _input(n=0)
    with pytest.raises(ReportInputError, match="no readings"):
        write_report(inp, tmp_path / "r.html")
    assert events_frame([]).empty


def test_since_takes_a_time_or_an_age() -> None:
    now = 1_000_000_000_000
    assert since_ms("90m", now) == now - 90 * 60_000
    assert since_ms("7d", now) == now - 7 * 86_400_000
    assert since_ms("2024-03-04", now) == 1_709_510_400_000
    with pytest.raises(ConfigError, match="neither a time"):
        since_ms("last week", now)


def test_the_validation_report_shows_calibration_and_error_by_horizon(tmp_path: Path) -> None:
    batches = pieces(to_batch(daily_load(ENTITIES, days=8.0, seed=3)), 6)
    path, metrics, _ = train_model_set(batches, P, tmp_path / "store", max_iter=5)
    out = write_validation_report(batches, P, path, metrics, tmp_path / "v.html")
    page = out.read_text()
    figures = json.loads(re.search(r'id="figures">(.*?)</script>', page, re.S).group(1))
    names = [t.get("name") for t in figures["calibration"]["data"]]
    assert names == ["calibrated", "900 s ahead", "3600 s ahead"]
    assert [t["name"] for t in figures["horizons"]["data"]] == ["trained set", "online baseline"]
    assert "MAPE %" in page and not (path / out.name).exists()  # beside the set, not in it
