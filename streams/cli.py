"""The ``gridstream`` command: one entry point for operators, analysts and local trials.

Environment and files are read here and nowhere else; everything below takes arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from schemas.exceptions import GridstreamError
from streams.cli_offline import cmd_backtest, cmd_report, cmd_train
from streams.cli_parser import build_parser
from streams.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from streams.ops.progress import Progress
    from streams.runtime.failpoints import Failpoints
    from streams.service import Service
    from streams.sim.generator import SimConfig
    from streams.sim.producer import SimStats

log = logging.getLogger("gridstream")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _setup_logging(level: str, fmt: str, secrets: Sequence[str] = ()) -> None:
    from streams.ops.logs import configure

    configure(level, fmt, redact=secrets)


def _secrets(settings: Settings) -> list[str]:
    """Values that must never reach a log line, whatever a library puts in its messages."""
    values = []
    if settings.kafka.sasl_password is not None:
        values.append(settings.kafka.sasl_password.get_secret_value())
    if settings.clickhouse.backend == "server":
        values.append(settings.clickhouse.secret())
    if settings.schema_registry.basic_auth_user_info is not None:
        user_info = settings.schema_registry.basic_auth_user_info.get_secret_value()
        values += [user_info, user_info.partition(":")[2]]
    return [v for v in values if v]


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT set the event: the loop finishes its batch, commits and returns."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


# -- commands ----------------------------------------------------------------------------------
def failpoints_from_env() -> Failpoints:
    """Crash points armed by ``GRIDSTREAM_FAILPOINTS`` (``streams.runtime.failpoints``)."""
    from streams.runtime.failpoints import Failpoints, parse

    seed = os.environ.get("GRIDSTREAM_FAILPOINTS_SEED")
    armed = parse(os.environ.get("GRIDSTREAM_FAILPOINTS", ""))
    return Failpoints(armed, int(seed) if seed else None)


def transactional_id(settings: Settings, index: int | None) -> str:
    """This worker's transactional id: worker ``index`` of ``--workers`` gets its own (the same
    id fences), and the default names the host."""
    base = settings.kafka.default_transactional_id(socket.gethostname())
    return base if index is None else f"{base}-{index}"


def _per_worker(settings: Settings, index: int) -> Settings:
    """Worker ``index`` of ``--workers`` gets its own group instance id (the same index after a
    restart is the same static member); its transactional id is ``transactional_id``'s."""
    k = settings.kafka
    instance = k.instance_id()
    if instance is None:
        return settings
    kafka = k.model_copy(update={"group_instance_id": f"{instance}-{index}"})
    return settings.model_copy(update={"kafka": kafka})


def cmd_run(args: argparse.Namespace) -> int:
    from streams.ops.http import start_http_server
    from streams.runtime.workers import check_workers, gc_policy, run_workers, tag_logs
    from streams.service import Assembly, build_service

    port = getattr(args, "http_port", None)
    if getattr(args, "no_migrate", False):  # the CLI edge: workers inherit it with the env
        os.environ["GRIDSTREAM_CLICKHOUSE__MIGRATE"] = "false"
    settings = load_settings(args.config, **({} if port is None else {"http_port": port}))
    workers = getattr(args, "workers", 1)
    check_workers(settings, workers)
    _setup_logging(settings.log_level, settings.log_format, _secrets(settings))
    index = getattr(args, "worker_index", None)
    if workers > 1 and index is None:  # the supervising parent
        return run_workers(settings, workers, args.config)
    if index is not None:
        tag_logs(index)
        settings = _per_worker(settings, index)
    stop = _stop_on_signals()
    engine = getattr(args, "engine", "native")
    how = Assembly(
        engine=engine,
        failpoints=failpoints_from_env(),
        transactional_id=transactional_id(settings, index),
    )
    service = build_service(settings, how)
    server = None
    if settings.http_port:  # up before the slow start-up steps: /health says "starting"
        m = service.monitor
        server = start_http_server(settings.http_port, m.health, m.registry, m.models)
    try:
        service.ensure_schema(settings.clickhouse.migrate)
        _log_start(settings, engine)
        balance = _start_balance(settings, service, stop)
        with gc_policy():  # after start-up: what it allocated is frozen out of the GC's sight
            stats = service.engine.run(stop)
        log.info("stopped after %d batches: %s", stats.batches, dict(stats.counters))
        if balance is not None:
            stop.set()
            balance.join(60)
    finally:
        if server is not None:
            server.stop()
    return 0


def _start_balance(settings: Settings, service: Service, stop: threading.Event) -> object:
    """With ``balance.enabled``, the energy balance's stages in a thread beside the engine,
    counting into /metrics."""
    if not settings.balance.enabled:
        return None
    from streams.runtime.balance_stage import start_in_thread

    counter = service.monitor.metrics.balance

    def metric(what: str, n: int) -> None:
        counter.labels(what).inc(n)

    return start_in_thread(settings, service.sink, stop, failpoints_from_env(), metric)


def _log_start(settings: Settings, engine: str) -> None:
    log.info(
        "gridstream run (%s engine): kafka %s (%s) group %s, inputs %s + %s, clickhouse %s, "
        "http %s",
        engine,
        settings.kafka.bootstrap_servers,
        settings.kafka.security_protocol,
        settings.kafka.group_id,
        settings.topics.meter,
        settings.topics.scada,
        settings.clickhouse.backend,
        settings.http_port or "off",
    )


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.tools.broker import EmbeddedBroker

    stop = _stop_on_signals()
    with EmbeddedBroker(host=args.host, port=args.port) as broker:
        print(f"embedded Kafka-compatible broker listening on {broker.bootstrap} (in memory)")
        print(f"  export GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap}")
        print("  Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print("broker exited", file=sys.stderr)
                return 1
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from streams.ops.http import probe

    port = _settings(args).http_port
    return probe(f"http://127.0.0.1:{port}/health") if port else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the schema as its owner, so processors can run with INSERT rights only."""
    from streams.runtime.wiring import clickhouse_sink

    settings = _settings(args)
    _setup_logging(settings.log_level, settings.log_format, _secrets(settings))
    sink = clickhouse_sink(settings)
    if sink is None:
        raise ConfigError("GRIDSTREAM_CLICKHOUSE__BACKEND is 'none': there is nothing to migrate")
    try:
        version = sink.ensure_schema()
    finally:
        sink.backend.close()
    where = f" on cluster {settings.clickhouse.cluster}" if settings.clickhouse.cluster else ""
    print(f"ClickHouse database {settings.clickhouse.database}{where}: schema version {version}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from sinks.table_format import format_table
    from streams.runtime.wiring import clickhouse_backend

    settings = _settings(args)
    backend = clickhouse_backend(settings)
    if backend is None:
        raise ConfigError("GRIDSTREAM_CLICKHOUSE__BACKEND is 'none': there is nothing to query")
    try:  # no DDL: an analyst's read-only user may run this
        backend.command(f"USE `{settings.clickhouse.database}`")
        result = backend.query(args.sql)
        print(format_table(result.column_names, result.rows, max_rows=args.max_rows))
    finally:
        backend.close()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from streams.ops.progress import Progress, wanted
    from streams.runtime.runner import ensure_topics
    from streams.sim.generator import SimConfig
    from streams.sim.resume import newest_reading_ms

    settings = _settings(args)
    _setup_logging(settings.log_level, settings.log_format)
    stop = _stop_on_signals()
    if args.seconds is not None:  # wall-clock limit; the simulator's own limits are simulated time
        timer = threading.Timer(args.seconds, stop.set)
        timer.daemon = True
        timer.start()
    if settings.kafka.create_topics:
        ensure_topics(settings)
    config = SimConfig(meters=args.meters, assets=args.assets, seed=args.seed)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - int(args.backfill_hours * 3_600_000)
    if args.resume:
        newest = newest_reading_ms(
            settings.kafka.client_config(), [settings.topics.meter, settings.topics.scada]
        )
        if newest is not None and newest >= start_ms:
            start_ms = min(newest + 1, now_ms)
            print(f"resuming after the newest reading in the topics ({newest} ms)", flush=True)
    print(
        f"simulating {args.meters} meters and {args.assets} SCADA assets into "
        f"{settings.topics.meter} / {settings.topics.scada} on "
        f"{settings.kafka.bootstrap_servers}"
        + (f", labels to {args.labels}" if args.labels else ""),
        flush=True,
    )
    with Progress(wanted(args.quiet)) as progress:
        stats = _simulate(settings, args, config, start_ms, stop, progress)
    print(
        f"produced {stats.produced:,} readings ({stats.duplicates:,} duplicates, "
        f"{stats.late:,} late, {stats.missing:,} missing), {stats.labels:,} labelled anomalies, "
        f"{stats.delivery_errors:,} delivery errors in {stats.wall_s:.1f} s"
    )
    return 1 if stats.delivery_errors else 0


def _simulate(settings: Settings, args: argparse.Namespace, config: SimConfig, start_ms: int,
              stop: threading.Event, progress: Progress) -> SimStats:
    """The simulator with a progress line: readings produced, and the simulated time reached."""
    from pathlib import Path

    from streams.sim.producer import run_simulator

    task = progress.task("simulating")

    def show(stats: SimStats) -> None:
        progress.update(task, completed=stats.produced, description=f"simulating: "
                        f"{stats.produced:,} readings, {stats.labels:,} labelled anomalies")

    stats = run_simulator(
        settings.kafka.client_config(),
        settings.topics.meter,
        settings.topics.scada,
        config,
        start_ms=start_ms,
        speed=args.speed,
        follow_clock=True,
        labels_path=Path(args.labels) if args.labels else None,
        labels_topic=settings.topics.labels,
        stop_event=stop,
        progress=show,
    )
    progress.finish(task)
    return stats


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.tools.demo import run_demo

    settings = _settings(args)
    logging.basicConfig(level=logging.WARNING)
    return run_demo(
        settings,
        seconds=args.seconds,
        meters=args.meters,
        assets=args.assets,
        stop=_stop_on_signals(),
    )


def bench_command(quick: bool, json_path: str | None, quiet: bool = False) -> list[str]:
    """The harness as its own interpreter runs it: the CLI never imports ``benchmarks``."""
    return [
        sys.executable,
        "-m",
        "benchmarks.harness",
        *(["--quick"] if quick else []),
        *(["--json", json_path] if json_path else []),
        *(["--quiet"] if quiet else []),
    ]


def run_child(cmd: Sequence[str]) -> int:
    """Run ``cmd`` in the foreground and return its exit status (128 + N if killed by signal N).

    Ctrl-C reaches the child too (same process group): it gets 10 s to clean up, then is killed.
    """
    import subprocess

    with subprocess.Popen(cmd) as proc:
        try:
            status = proc.wait()
        except KeyboardInterrupt:
            try:
                status = proc.wait(timeout=10)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                proc.kill()
                status = proc.wait()
    return status if status >= 0 else 128 - status


def cmd_bench(args: argparse.Namespace) -> int:
    return run_child(bench_command(args.quick, args.json, args.quiet))


def cmd_config(args: argparse.Namespace) -> int:
    from streams.cli_config import render

    print(render(_settings(args), args.format), end="")
    return 0


# -- dispatch ----------------------------------------------------------------------------------
HANDLERS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "simulate": cmd_simulate,
    "broker": cmd_broker,
    "health": cmd_health,
    "migrate": cmd_migrate,
    "query": cmd_query,
    "backtest": cmd_backtest,
    "report": cmd_report,
    "bench": cmd_bench,
    "train": cmd_train,
    "config": cmd_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_level:  # the CLI edge: settings (and --workers children) read it from here
        os.environ["GRIDSTREAM_LOG_LEVEL"] = args.log_level
    try:
        return int(HANDLERS[args.command](args))
    except ConfigError as exc:
        print(f"gridstream: {exc}", file=sys.stderr)
        return 2
    except GridstreamError as exc:
        print(f"gridstream: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
