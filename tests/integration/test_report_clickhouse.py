"""Reports and the Grafana entity explorer on ClickHouse (chDB), from simulated telemetry that the
processor scored and the sink wrote: ``gridstream report`` reads it back, and every query of the
explorer dashboard, with Grafana's variables and macros filled in, runs and returns rows."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.params import ProcessorParams
from schemas.batch import DeadLetterRecord, ForecastBatch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from streams.cli import main
from streams.ops.accuracy import ForecastAccuracy
from streams.sim.generator import SimConfig, TelemetrySimulator
from streams.tools.backtest import backtest_values

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker/grafana/dashboards/gridstream-explorer.json"
START_MS = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
DAYS = 5


@dataclass(frozen=True, slots=True)
class Written:
    backend: ChdbBackend
    database: str
    labels: Path
    end_ms: int


def _simulate(labels: Path) -> tuple[list[bytes], list[str]]:
    sim = TelemetrySimulator(
        SimConfig(meters=10, assets=3, seed=5, anomaly_rate_per_day=1.5), START_MS
    )
    values: list[bytes] = []
    contracts: list[str] = []
    with labels.open("wb") as f:
        for t in range(START_MS + 3_600_000, START_MS + DAYS * 86_400_000 + 1, 3_600_000):
            batch = sim.step_until(t)
            values += batch.value
            contracts += batch.contract
            f.writelines(lab.model_dump_json().encode() + b"\n" for lab in batch.labels)
    return values, contracts


@pytest.fixture(scope="module")
def written(chdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    backend = ChdbBackend(chdb_path)
    database = f"rep_{uuid.uuid4().hex[:8]}"
    sink = ClickHouseSink(backend, database)
    sink.ensure_schema()
    labels = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    values, contracts = _simulate(labels)
    end_ms = START_MS + DAYS * 86_400_000
    acc = ForecastAccuracy()  # the runtime's matcher: forecast_errors as a live run writes it
    result = backtest_values(
        values, contracts, ProcessorParams(),
        on_batch=lambda batch, res: sink.write(
            res.forecasts, [], [], end_ms, readings=batch, errors=acc.track(batch, res)
        ),
    )
    dead = [
        DeadLetterRecord("grid.meter.readings", 0, i, None, values[i], reason,
                         result.dead_letter_error[i] or "", end_ms)
        for i, reason in enumerate(result.dead_letter) if reason is not None
    ]
    assert dead and result.events, "the explorer panels need dead letters and anomalies"
    sink.write(ForecastBatch.empty(), result.events, dead, end_ms)
    yield Written(backend, database, labels, end_ms)
    backend.command(f"DROP DATABASE IF EXISTS `{database}`")
    backend.close()


def test_gridstream_report_reads_clickhouse(
    written: Written, chdb_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__PATH", str(chdb_path))
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__DATABASE", written.database)
    out = tmp_path / "ch.html"
    code = main(["report", "--since", "2024-03-04T00:00:00Z", "--until", "2024-03-10",
                 "--entities", "meter-000001,feeder-0000", "--entities", "sub-000,no{such}'meter",
                 "--labels", str(written.labels), "--output", str(out)])
    assert code == 0
    assert "3 entities" in capsys.readouterr().out
    page = out.read_text()
    for key in ("meter:meter-000001", "feeder:feeder-0000", "substation:sub-000"):
        assert f'value="{key}"' in page
    assert "Labelled windows" in page


def test_gridstream_report_says_when_there_is_nothing(
    written: Written, chdb_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__PATH", str(chdb_path))
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__DATABASE", written.database)
    code = main(["report", "--since", "2030-01-01", "--output", str(tmp_path / "x.html")])
    assert code == 1
    assert "no readings since 2030-01-01" in capsys.readouterr().err


# -- the Grafana entity explorer --------------------------------------------------------------
def explorer_queries() -> dict[str, str]:
    """Every SQL of the explorer: variables, panel targets, annotations."""
    doc = json.loads(DASHBOARD.read_text())
    found = {f"variable {v['name']}": v["query"] for v in doc["templating"]["list"]}
    for panel in doc["panels"]:
        for t in panel["targets"]:
            found[f"panel {panel['title']} {t['refId']}"] = t["rawSql"]
    for a in doc["annotations"]["list"]:
        found[f"annotation {a['name']}"] = a["target"]["rawSql"]
    return found


def fill(sql: str, database: str, variables: dict[str, str], span_s: tuple[int, int]) -> str:
    """What the ClickHouse plugin sends: macros expanded, variables substituted."""
    start, end = span_s
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m[1]} >= toDateTime({start}) AND {m[1]} <= toDateTime({end})", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({start})")
    sql = sql.replace("$__toTime", f"toDateTime({end})")
    for name, value in variables.items():
        sql = sql.replace("${" + name + "}", value)
    sql = sql.replace("gridstream.", f"`{database}`.")
    assert "$" not in sql, sql
    return sql


def test_every_explorer_query_returns_rows_on_chdb(written: Written) -> None:
    top = written.backend.query(
        f"SELECT entity_id FROM `{written.database}`.top_anomalous_entities LIMIT 1"
    ).rows[0][0]
    variables = {"entity": top, "horizon": "900"}
    span = (START_MS // 1000, written.end_ms // 1000)
    queries = explorer_queries()
    assert len(queries) >= 10
    empty = []
    for name, sql in queries.items():
        if not written.backend.query(fill(sql, written.database, variables, span)).rows:
            empty.append(name)
    # an entity need not have events of every severity; everything else must show data
    assert [n for n in empty if not n.startswith("annotation")] == []
    assert len([n for n in empty if n.startswith("annotation")]) < 3


def test_explorer_queries_are_the_documented_ones() -> None:
    doc = REPO.joinpath("docs", "reports.md").read_text()  # moved there from the README
    missing = [name for name, sql in explorer_queries().items() if sql not in doc]
    assert missing == [], "docs/reports.md's explorer queries differ from the dashboard's"
