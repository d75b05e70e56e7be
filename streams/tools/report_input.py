"""What a report shows, whatever it came from: readings, forecasts, anomaly events and labels.

Two sources fill the same ``ReportInput``: a backtest (``BacktestCollector`` is handed to the
backtest as its ``on_batch`` hook, so it sees exactly what the processor saw and made) and
ClickHouse (``from_clickhouse``, reading the tables ``FINAL`` as the analyst views do). Every
time is UTC epoch milliseconds; an entity is the pair (entity_kind, entity_id).

Labels come in two formats, told apart by their first character: the simulator's JSON lines
(``{"entity_id", "entity_kind", "kind", "start_ts", "end_ts"}`` per line) and NAB's windows
file (``{"<category>/<name>.csv": [[start, end], ...]}``; the entity is the meter
``<category>/<name>``, as ``benchmarks/quality_nab.py`` names it, naive times read as UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from models.evaluation import Label
from models.processor import ProcessResult
from schemas.batch import AnomalyRecord, ReadingBatch
from schemas.exceptions import GridstreamError
from sinks.clickhouse_common import ClickHouseBackend
from streams.config import ConfigError

READING_COLUMNS = ("entity_kind", "entity_id", "ts_ms", "value")
FORECAST_COLUMNS = ("entity_kind", "entity_id", "horizon_s", "target_ms", "p10", "p50", "p90")
EVENT_COLUMNS = (
    "entity_kind", "entity_id", "ts_ms", "score", "severity", "detectors", "fired", "explanation",
)


class ReportInputError(GridstreamError, ValueError):
    """The report cannot be made from what it was given (labels unreadable, nothing to show)."""


@dataclass(frozen=True, slots=True)
class ReportInput:
    """The frames a report is drawn from (columns as the ``*_COLUMNS`` tuples above)."""

    title: str
    source: str
    horizons_s: tuple[int, ...]
    readings: pd.DataFrame
    forecasts: pd.DataFrame
    events: pd.DataFrame  # detectors: dict, fired: list, explanation: list of dicts
    labels: tuple[Label, ...] = ()


def parse_time_ms(text: str) -> int:
    """Epoch ms of an RFC 3339 / ISO time; a time without an offset is UTC."""
    stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def since_ms(text: str, now_ms: int) -> int:
    """``--since``/``--until``: an RFC 3339 / ISO time (UTC without an offset) or an age such as
    90m, 12h, 7d before ``now_ms``."""
    units = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}
    text = text.strip()
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now_ms - int(float(text[:-1]) * units[text[-1]])
    try:
        return parse_time_ms(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a time (2026-11-20T00:00Z) nor an age (90m, 12h, 7d)"
        ) from None


def load_labels(path: Path) -> list[Label]:
    """Labelled anomaly windows from a simulator labels file or a NAB windows JSON file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ReportInputError(f"cannot read labels {path}: {exc.strerror}") from None
    try:
        if text.lstrip()[:1] == b"{" and b"\n{" not in text.strip():  # one document: NAB
            return _nab_windows(orjson.loads(text))
        return [_sim_label(orjson.loads(line)) for line in text.splitlines() if line.strip()]
    except (KeyError, TypeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ReportInputError(f"labels {path}: neither simulator nor NAB labels: {exc}") from None


def _sim_label(doc: dict) -> Label:
    return Label(
        doc["entity_id"], doc["entity_kind"], doc["kind"],
        parse_time_ms(doc["start_ts"]), parse_time_ms(doc["end_ts"]),
    )


def _nab_windows(doc: dict) -> list[Label]:
    out = []
    for name, windows in doc.items():
        entity = name.removesuffix(".csv")
        for start, end in windows:
            out.append(Label(entity, "meter", "nab_window", parse_time_ms(start),
                             parse_time_ms(end)))
    if not doc:
        raise ValueError("no files in the windows document")
    return out


def events_frame(events: list[AnomalyRecord]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity_kind": [e.entity_kind for e in events],
            "entity_id": [e.entity_id for e in events],
            "ts_ms": np.array([e.ts_ms for e in events], dtype=np.int64),
            "score": np.array([e.score for e in events], dtype=np.float64),
            "severity": [e.severity for e in events],
            "detectors": [e.detectors for e in events],
            "fired": [list(e.fired) for e in events],
            "explanation": [e.explanation for e in events],
        },
        columns=list(EVENT_COLUMNS),
    )


@dataclass(slots=True)
class BacktestCollector:
    """The backtest's ``on_batch`` hook: keeps the readings and forecasts for a report."""

    readings: list[pd.DataFrame] = field(default_factory=list)
    forecasts: list[pd.DataFrame] = field(default_factory=list)

    def __call__(self, batch: ReadingBatch, result: ProcessResult) -> None:
        self.readings.append(pd.DataFrame({
            "entity_kind": batch.kind, "entity_id": batch.entity,
            "ts_ms": batch.ts_ms, "value": batch.value,
        }))
        fc = result.forecasts
        if len(fc):
            self.forecasts.append(pd.DataFrame({
                "entity_kind": fc.kind, "entity_id": fc.entity, "horizon_s": fc.horizon_s,
                "target_ms": fc.target_ms, "p10": fc.p10, "p50": fc.p50, "p90": fc.p90,
            }))

    def report_input(
        self, title: str, source: str, horizons_s: tuple[int, ...],
        events: list[AnomalyRecord], labels: list[Label] | None = None,
    ) -> ReportInput:
        return ReportInput(
            title, source, tuple(horizons_s),
            _concat(self.readings, READING_COLUMNS), _concat(self.forecasts, FORECAST_COLUMNS),
            events_frame(events), tuple(labels or ()),
        )


def _concat(parts: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(parts, ignore_index=True)


# -- ClickHouse ------------------------------------------------------------------------------
def _entity_filter(entities: list[str] | None) -> str:
    if not entities:
        return ""
    quoted = ", ".join("'" + e.replace("\\", "\\\\").replace("'", "\\'") + "'" for e in entities)
    return f" AND entity_id IN ({quoted})"


def _frame(backend: ClickHouseBackend, sql: str, columns: tuple[str, ...]) -> pd.DataFrame:
    result = backend.query(sql)
    return pd.DataFrame(result.rows, columns=list(columns))


def from_clickhouse(
    backend: ClickHouseBackend,
    database: str,
    start_ms: int,
    end_ms: int | None = None,
    entities: list[str] | None = None,
    labels: list[Label] | None = None,
) -> ReportInput:
    """Readings, forecasts (by target time) and anomalies in [start, end) from the tables."""
    db = f"`{database}`"
    where = f"WHERE @col >= fromUnixTimestamp64Milli({start_ms}, 'UTC')"
    if end_ms:
        where += f" AND @col < fromUnixTimestamp64Milli({end_ms}, 'UTC')"

    def at(col: str) -> str:  # replace, not format: an entity id may hold braces
        return where.replace("@col", col) + _entity_filter(entities)

    ms = "toUnixTimestamp64Milli({})"
    readings = _frame(backend, (
        f"SELECT entity_kind, entity_id, {ms.format('ts')}, value FROM {db}.readings FINAL "
        f"{at('ts')} ORDER BY entity_kind, entity_id, ts"), READING_COLUMNS)
    forecasts = _frame(backend, (
        f"SELECT entity_kind, entity_id, horizon_s, {ms.format('target_ts')}, p10, p50, p90 "
        f"FROM {db}.forecasts FINAL {at('target_ts')} "
        "ORDER BY entity_kind, entity_id, horizon_s, target_ts"), FORECAST_COLUMNS)
    events = _frame(backend, (
        f"SELECT entity_kind, entity_id, {ms.format('ts')}, score, severity, detectors, fired, "
        f"explanation FROM {db}.anomalies FINAL {at('ts')} ORDER BY ts"), EVENT_COLUMNS)
    events["explanation"] = [orjson.loads(x) if x else [] for x in events["explanation"]]
    events["detectors"] = [dict(d) for d in events["detectors"]]
    horizons = tuple(sorted(int(h) for h in forecasts["horizon_s"].unique()))
    if readings.empty:
        raise ReportInputError(
            f"ClickHouse database {database} has no readings since "
            f"{datetime.fromtimestamp(start_ms / 1000, UTC):%Y-%m-%d %H:%M} UTC"
            + (" for the entities asked for" if entities else "")
        )
    source = f"ClickHouse database {database}"
    return ReportInput("gridstream report", source, horizons, readings, forecasts, events,
                       tuple(labels or ()))
