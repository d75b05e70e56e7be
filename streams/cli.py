"""The ``gridstream`` command: one entry point for operators, analysts and local trials.

Environment and files are read here and nowhere else; everything below takes arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

from schemas.exceptions import GridstreamError
from streams.config import ConfigError, Settings, load_settings

log = logging.getLogger("gridstream")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _setup_logging(level: str, fmt: str) -> None:
    from streams.logs import configure

    configure(level, fmt)


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
def cmd_run(args: argparse.Namespace) -> int:
    from streams.runner import StreamRunner
    from streams.wiring import clickhouse_sink

    settings = _settings(args)
    _setup_logging(settings.log_level, settings.log_format)
    stop = _stop_on_signals()
    sink = clickhouse_sink(settings)
    if sink is not None:
        sink.ensure_schema()
    runner = StreamRunner(settings, clickhouse=sink)
    log.info(
        "gridstream run: kafka %s group %s, inputs %s + %s, clickhouse %s",
        settings.kafka.bootstrap_servers,
        settings.kafka.group_id,
        settings.topics.meter,
        settings.topics.scada,
        settings.clickhouse.backend,
    )
    stats = runner.run(stop)
    log.info("stopped after %d batches: %s", stats.batches, dict(stats.counters))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

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


def cmd_query(args: argparse.Namespace) -> int:
    from sinks.table_format import format_table
    from streams.wiring import clickhouse_backend

    settings = _settings(args)
    backend = clickhouse_backend(settings)
    if backend is None:
        raise ConfigError("GRIDSTREAM_CLICKHOUSE__BACKEND is 'none': there is nothing to query")
    try:
        backend.command(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse.database}`")
        backend.command(f"USE `{settings.clickhouse.database}`")
        result = backend.query(args.sql)
        print(format_table(result.column_names, result.rows, max_rows=args.max_rows))
    finally:
        backend.close()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.runner import ensure_topics
    from streams.simulation import SimConfig
    from streams.simulator import run_simulator

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
    print(
        f"simulating {args.meters} meters and {args.assets} SCADA assets into "
        f"{settings.topics.meter} / {settings.topics.scada} on "
        f"{settings.kafka.bootstrap_servers}"
        + (f", labels to {args.labels}" if args.labels else ""),
        flush=True,
    )
    stats = run_simulator(
        settings.kafka.client_config(),
        settings.topics.meter,
        settings.topics.scada,
        config,
        start_ms=start_ms,
        speed=args.speed if args.backfill_hours == 0 else float("inf"),
        follow_clock=True,
        labels_path=Path(args.labels) if args.labels else None,
        labels_topic=settings.topics.labels,
        stop_event=stop,
    )
    print(
        f"produced {stats.produced:,} readings ({stats.duplicates:,} duplicates, "
        f"{stats.late:,} late, {stats.missing:,} missing), {stats.labels:,} labelled anomalies, "
        f"{stats.delivery_errors:,} delivery errors in {stats.wall_s:.1f} s"
    )
    return 1 if stats.delivery_errors else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    settings = _settings(args)
    logging.basicConfig(level=logging.WARNING)
    return run_demo(
        settings,
        seconds=args.seconds,
        meters=args.meters,
        assets=args.assets,
        stop=_stop_on_signals(),
    )


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridstream",
        description="Streaming anomaly detection and nowcasts for electricity-grid telemetry.",
    )
    parser.add_argument("--config", help="TOML settings file (default: $GRIDSTREAM_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the processor, configured by env/file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="broker + embedded ClickHouse + simulator + processor")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    p.add_argument("--meters", type=int, default=400)
    p.add_argument("--assets", type=int, default=30)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="produce realistic telemetry with labelled anomalies")
    p.add_argument("--meters", type=int, default=100)
    p.add_argument("--assets", type=int, default=10)
    p.add_argument(
        "--backfill-hours",
        type=float,
        default=0.0,
        help="start this far in the past and catch up as fast as possible",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per second once caught up (default real time)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--labels", default=None, help="append injected-anomaly labels to this file")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("broker", help="the embedded Kafka-compatible broker for local use")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("query", help="run SQL on the configured ClickHouse and print a table")
    p.add_argument("sql")
    p.add_argument("--max-rows", type=int, default=100)
    p.set_defaults(func=cmd_query)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
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
