"""``gridstream demo``: the whole system on one machine with no set-up.

Starts the embedded broker and embedded ClickHouse, replays a week of simulated telemetry with
labelled anomalies through the real processor while showing live progress, then summarises:
counts, detection against the injected labels, nowcast error against the actual readings, and
example anomaly events; then writes an interactive report (``demo-report.html`` beside the chDB
data) and prints its path. The ClickHouse data stays for ``gridstream query``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.evaluation import HorizonError, match_detections, median
from schemas.accuracy import percentage_error
from schemas.batch import AnomalyRecord
from schemas.outputs import SEVERITIES
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from sinks.encode import anomaly_json
from streams.config import ClickHouseSettings, KafkaSettings, Settings
from streams.ops.accuracy import ForecastAccuracy, Matches
from streams.ops.http import HttpServer, start_http_server
from streams.ops.monitor import Monitor
from streams.ops.report import BatchReport
from streams.runtime.runner import StreamRunner, ensure_topics
from streams.service import Assembly, build_service
from streams.sim.generator import SimConfig
from streams.sim.producer import SimStats, run_simulator
from streams.tools.broker import EmbeddedBroker
from streams.tools.demo_balance import BalanceDemo, balance_events
from streams.tools.report import ReportSummary
from streams.tools.report_input import load_labels

BACKFILL_DAYS = 7
DETECTION_GRACE_MS = 3_600_000  # an event up to an hour after a labelled window still counts


class DemoState:
    """Collected from the runner thread's batch reports; read by the display thread."""

    def __init__(self, horizons: tuple[int, ...]) -> None:
        self.lock = threading.Lock()
        self.horizons = horizons
        self.accuracy = ForecastAccuracy()  # the /metrics rule (schemas.accuracy), all entities
        self.errors: dict[int, HorizonError] = defaultdict(HorizonError)
        self.counters: Counter[str] = Counter()
        self.events: list[AnomalyRecord] = []
        self.first_ts: int | None = None
        self.batch_s: list[float] = []

    def on_batch(self, report: BatchReport) -> None:
        result, readings = report.result, report.readings_batch
        with self.lock:
            # forecasts first: a target inside the same batch is then matched too
            _add_errors(self.errors, self.accuracy.track(readings, result))
            self.counters.update(result.counters)
            self.counters["consumed"] += report.consumed
            self.counters["dead_letters"] += report.dead_letters
            self.events.extend(result.anomalies)
            self.batch_s.append(report.duration_s)
            if len(readings) and self.first_ts is None:
                self.first_ts = int(readings.ts_ms.min())


def _add_errors(errors: dict[int, HorizonError], m: Matches) -> None:
    """Sum matched forecasts into per-horizon totals (MAE, MAPE, WAPE, p10-p90 coverage)."""
    ape = percentage_error(m.actual, m.p50)
    for h in np.unique(m.horizon_s).tolist():
        rows = m.horizon_s == h
        actual, err, ape_h = m.actual[rows], errors[h], ape[rows]
        defined = np.isfinite(ape_h)
        err.n += int(rows.sum())
        err.abs_err += float(np.abs(actual - m.p50[rows]).sum())
        err.abs_actual += float(np.abs(actual).sum())
        err.ape_sum += float(ape_h[defined].sum())
        err.ape_n += int(defined.sum())
        err.covered += int(((m.p10[rows] <= actual) & (actual <= m.p90[rows])).sum())


def _demo_settings(base: Settings, bootstrap: str) -> Settings:
    kafka = base.kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "group_id": "gridstream-demo",
            "session_timeout_ms": 6000,
            # one life on a fresh broker: nothing to rejoin, and the embedded broker holds a
            # static member's JoinGroup and SyncGroup 3 s each (see Operations)
            "static_membership": False,
            "partitions": 3,
            "batch_timeout_s": 0.1,
        }
    )
    clickhouse = base.clickhouse
    if clickhouse.backend != "chdb":
        clickhouse = ClickHouseSettings(path=clickhouse.path, database=clickhouse.database)
    return base.model_copy(
        update={"kafka": KafkaSettings.model_validate(kafka.model_dump()), "clickhouse": clickhouse}
    )


def run_demo(
    base: Settings,
    seconds: float,
    meters: int,
    assets: int,
    stop: threading.Event | None = None,
    out: object = None,
) -> int:
    """Run the demo for about ``seconds`` and print its summary; returns the exit code."""
    stop = stop or threading.Event()
    write = (lambda s: print(s, flush=True)) if out is None else out  # type: ignore[assignment]
    started = time.time()
    # kept beside the data, so `gridstream report --labels` can show the windows again
    labels_file = Path(base.clickhouse.path).resolve().parent / "demo-labels.jsonl"
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    labels_file.write_bytes(b"")
    with EmbeddedBroker() as broker:
        settings = _demo_settings(base, broker.bootstrap)
        ensure_topics(settings)
        backend = ChdbBackend(settings.clickhouse.path)
        state = DemoState(settings.processing.horizons_s)
        service = build_service(settings, Assembly(backend=backend, on_batch=state.on_batch))
        service.ensure_schema()
        sink, runner = service.sink, service.engine
        assert sink is not None and isinstance(runner, StreamRunner)
        server = _http(settings, service.monitor, write)
        config = SimConfig(meters=meters, assets=assets, seed=7, anomaly_rate_per_day=0.4)
        parts = _Parts(runner, broker.bootstrap, settings, config, labels_file)
        write(
            f"gridstream demo: broker {broker.bootstrap}, ClickHouse (chDB) at "
            f"{settings.clickhouse.path}, database {settings.clickhouse.database}"
        )
        write(
            f"replaying {BACKFILL_DAYS} days of telemetry from {meters} meters and {assets} "
            f"SCADA assets with injected anomalies, for about {seconds:.0f} s\n"
        )
        balance = BalanceDemo(settings, sink, int(started * 1000))
        balance.start()
        parts.start(started, seconds)
        _show_progress(write, state, parts, stop, started, seconds)
        parts.finish(state, seconds)
        balance.finish(max(10.0, 0.5 * seconds))
        backend_summary = _clickhouse_counts(sink)
        balance_rows = balance_events(sink)
        report = _report(backend, settings, state, labels_file, write)
        backend.close()
        if server is not None:
            server.stop()
    if parts.error:
        raise parts.error[0]
    sim = parts.sim_result[0] if parts.sim_result else None
    _summary(write, state, sim, labels_file, backend_summary, time.time() - started, settings)
    balance.summary(write, balance_rows)
    if report is not None:
        write(f"\n{report.line()}\nopen it in a browser (it works offline): {report.path}")
        write(f"again, or for other entities and times: gridstream report --since 8d --labels "
              f"{labels_file} --output FILE")
    return 0


def _report(backend: ChdbBackend, settings: Settings, state: DemoState, labels_file: Path,
            write) -> ReportSummary | None:  # noqa: ANN001
    """The demo's interactive report, from what it wrote to ClickHouse, next to the data."""
    from streams.tools.report import write_report
    from streams.tools.report_input import from_clickhouse

    if state.first_ts is None:
        return None
    path = Path(settings.clickhouse.path).resolve().parent / "demo-report.html"
    labels = load_labels(labels_file) if labels_file.exists() else []
    inp = from_clickhouse(backend, settings.clickhouse.database, state.first_ts, labels=labels)
    inp = replace(inp, title="gridstream demo",
                  source=f"demo: simulated telemetry in {inp.source}")
    return write_report(inp, path)


class _Parts:
    """The demo's two threads: the processor (the assembled service) and the simulator."""

    def __init__(
        self, runner: StreamRunner, bootstrap: str, settings: Settings, config: SimConfig,
        labels_file: Path,
    ) -> None:
        self.runner, self.bootstrap, self.settings = runner, bootstrap, settings
        self.config, self.labels_file = config, labels_file
        self.runner_stop, self.sim_stop = threading.Event(), threading.Event()
        self.error: list[BaseException] = []
        self.sim_result: list[SimStats] = []
        self.proc_thread = threading.Thread(target=self._process, name="processor", daemon=True)
        self.sim_thread: threading.Thread | None = None

    def _process(self) -> None:
        try:
            self.runner.run(self.runner_stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error.append(exc)

    def start(self, started: float, seconds: float) -> None:
        """Backfill ``BACKFILL_DAYS`` of telemetry in about 70 % of ``seconds``."""
        now_ms = int(started * 1000)
        backfill_ms = BACKFILL_DAYS * 86_400_000
        replay_s = max(seconds * 0.7, 1.0)
        t = self.settings.topics

        def simulate() -> None:
            self.sim_result.append(
                run_simulator(
                    self.bootstrap, t.meter, t.scada, self.config,
                    start_ms=now_ms - backfill_ms, speed=backfill_ms / 1000.0 / replay_s,
                    until_ms=now_ms, follow_clock=True, labels_path=self.labels_file,
                    stop_event=self.sim_stop,
                )
            )

        self.sim_thread = threading.Thread(target=simulate, name="simulator", daemon=True)
        self.proc_thread.start()
        self.sim_thread.start()

    def simulated_all(self, consumed: int) -> bool:
        """The simulator finished and the processor consumed everything it produced."""
        done = self.sim_thread is not None and not self.sim_thread.is_alive()
        return done and bool(self.sim_result) and consumed >= self.sim_result[0].produced

    def finish(self, state: DemoState, seconds: float) -> None:
        """Stop the simulator, let the processor drain what was produced, then stop it."""
        self.sim_stop.set()
        if self.sim_thread is not None:
            self.sim_thread.join(30)
        produced = self.sim_result[0].produced if self.sim_result else 0
        drain_until = time.time() + max(5.0, 0.3 * seconds)
        while time.time() < drain_until and not self.error:
            with state.lock:
                if state.counters["consumed"] >= produced:
                    break
            time.sleep(0.2)
        self.runner_stop.set()
        self.proc_thread.join(60)


def _show_progress(
    write, state: DemoState, parts: _Parts, stop: threading.Event,  # noqa: ANN001
    started: float, seconds: float,
) -> None:
    """One progress line a second until the time is up or everything produced was processed."""
    deadline = started + seconds
    last_n, last_t = 0, time.time()
    while not stop.is_set() and time.time() < deadline and not parts.error:
        stop.wait(1.0)
        with state.lock:
            c = Counter(state.counters)
        now = time.time()
        rate = (c["consumed"] - last_n) / max(now - last_t, 1e-6)
        last_n, last_t = c["consumed"], now
        write(
            f"  {now - started:5.1f}s  readings {c['consumed']:>9,} ({rate:>8,.0f}/s)  "
            f"forecasts {c['forecasts']:>9,}  anomalies critical {c['anomalies_critical']:>4}"
            f" warning {c['anomalies_warning']:>4} info {c['anomalies_info']:>4}  "
            f"dead letters {c['dead_letters']:>5,}"
        )
        if parts.simulated_all(c["consumed"]):
            break  # everything produced has been processed


def _http(settings: Settings, monitor: Monitor, write) -> HttpServer | None:  # noqa: ANN001
    """/health, /metrics and /models while the demo runs; a busy port only loses them."""
    if not settings.http_port:
        return None
    try:
        server = start_http_server(settings.http_port, monitor.health, monitor.registry,
                                   monitor.models, host="127.0.0.1")
    except OSError as exc:
        write(f"(no HTTP endpoints: port {settings.http_port}: {exc.strerror})")
        return None
    write(f"health and metrics: {server.url}/health  {server.url}/metrics  {server.url}/models")
    return server


def _clickhouse_counts(sink: ClickHouseSink) -> dict[str, int]:
    db = sink.database
    out = {}
    for table in ("readings", "forecasts", "anomalies", "dead_letters"):
        out[table] = int(sink.query(f"SELECT count() FROM {db}.{table} FINAL").rows[0][0])
    return out


def _summary(
    write,
    state: DemoState,
    sim: SimStats | None,
    labels_file: Path,  # noqa: ANN001
    ch: dict[str, int],
    elapsed: float,
    settings: Settings,
) -> None:
    c = state.counters
    write("\n== summary " + "=" * 60)
    produced = sim.produced if sim else 0
    write(
        f"readings produced {produced:,}, consumed {c['consumed']:,} in {elapsed:.1f} s; "
        f"scored {c['scored']:,}, warming up {c['warming_up']:,}, "
        f"duplicates dropped {c['dropped_duplicate']:,}, dead letters {c['dead_letters']:,}"
    )
    if state.batch_s:
        write(f"batches {len(state.batch_s):,}, median batch {1000 * median(state.batch_s):.1f} ms")
    write(
        f"ClickHouse rows (FINAL): readings {ch['readings']:,}, forecasts {ch['forecasts']:,}, "
        f"anomalies {ch['anomalies']:,}, dead letters {ch['dead_letters']:,}"
    )
    labels = load_labels(labels_file) if labels_file.exists() else []
    # Detection is judged from the fourth simulated day: the seasonal detector needs three days.
    scored_from = (state.first_ts or 0) + 3 * 86_400_000
    det = match_detections(state.events, labels, DETECTION_GRACE_MS, scored_from)
    write(
        f"\ndetection vs injected labels (from day 4): events {det.events}, precision "
        f"{_pct(det.precision)}, recall {_pct(det.recall)} ({det.detected}/{det.labels})"
    )
    for kind, (found, total) in det.per_kind.items():
        delay = median(det.delays_s.get(kind, []))
        shown = "-" if math.isnan(delay) else f"{delay / 60:.0f} min"
        write(f"  {kind:<13} recall {found:>3}/{total:<3} median delay {shown}")
    write("\nnowcast error against the actual readings:")
    for h, err in sorted(state.errors.items()):
        write(
            f"  horizon {h:>5} s: n {err.n:>8,}  MAPE {err.mape:6.2f} %  WAPE {err.wape:6.2f} %"
            f"  MAE {err.mae:.3f}  p10-p90 coverage {100 * err.coverage:5.1f} %"
        )
    _examples(write, state.events)
    db = settings.clickhouse.database
    write(
        f'\nquery the results: gridstream query "SELECT severity, count() FROM {db}.anomalies '
        'FINAL GROUP BY severity"'
    )


def _examples(write, events: list[AnomalyRecord]) -> None:  # noqa: ANN001
    """Counts by severity and one example event of each."""
    sev = Counter(e.severity for e in events)
    write(
        f"\nanomaly events: critical {sev['critical']}, warning {sev['warning']}, "
        f"info {sev['info']}"
    )
    for severity in reversed(SEVERITIES):
        ev = next((e for e in events if e.severity == severity), None)
        if ev is not None:
            doc = anomaly_json(ev)
            top = doc["explanation"][0] if doc["explanation"] else {}
            write(
                f"  e.g. {severity}: {ev.entity_kind} {ev.entity_id} at {doc['ts']} score "
                f"{ev.score:.2f} fired {ev.fired}; {top.get('feature')} = "
                f"{_num(top.get('value'))}, expected {_num(top.get('expected'))}, "
                f"deviation {_num(top.get('deviation'))}"
            )


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f} %"


def _num(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)
