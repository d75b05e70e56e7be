"""The ``gridstream`` command line: one parser function per command; ``streams.cli`` runs them.

The global options (``--config``, ``--log-level``, ``--quiet``) are accepted before and after the
command (``gridstream --config x.toml run`` and ``gridstream run --config x.toml``); given after
it, they win.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("gridstream")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """The options every command takes; ``default`` is SUPPRESS after the command, so an option
    given only before it is not reset by the subcommand's parser."""
    parser.add_argument(
        "--config", default=default, help="TOML settings file (default: $GRIDSTREAM_CONFIG)"
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        default=default,
        help="log level (default: $GRIDSTREAM_LOG_LEVEL or INFO)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="no progress display (it is off anyway when stderr is not a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridstream",
        description="Streaming anomaly detection and nowcasts for electricity-grid telemetry.",
    )
    parser.add_argument(
        "--version", action="version", version=f"gridstream {_version()}",
        help="print the installed version and exit",
    )
    _global_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub, common)
    return parser


def add_run(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run", parents=[common], help="the processor, configured by env/file")
    p.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="port of /health, /metrics, /models (default $GRIDSTREAM_HTTP_PORT or 8000; 0 = off)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes in one consumer group (default 1); worker i serves HTTP on port + i; "
        "not with embedded chDB",
    )
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--no-migrate",
        action="store_true",
        help="only check the ClickHouse schema, never change it (a user with INSERT rights "
        "suffices; run `gridstream migrate` first); same as GRIDSTREAM_CLICKHOUSE__MIGRATE=false",
    )
    p.add_argument(
        "--engine",
        choices=["native", "faust"],
        default="native",
        help="native: confluent-kafka loop (default); faust: the same core in a faust-streaming "
        "worker (needs the 'faust' extra; see README, Delivery guarantees)",
    )
    return p


def add_demo(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo", parents=[common], help="broker + embedded ClickHouse + simulator + processor")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    p.add_argument("--meters", type=int, default=400, help="simulated meters (default 400)")
    p.add_argument(
        "--assets", type=int, default=30, help="simulated SCADA assets (default 30)"
    )
    return p


def add_simulate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate", parents=[common], help="produce realistic telemetry with labelled anomalies")
    p.add_argument("--meters", type=int, default=100, help="simulated meters (default 100)")
    p.add_argument(
        "--assets", type=int, default=10, help="simulated SCADA assets (default 10)"
    )
    p.add_argument(
        "--backfill-hours",
        type=float,
        default=0.0,
        help="start this far in the past and catch up at --speed",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="start after the newest reading already in the input topics, so a restart continues "
        "the stream instead of producing the backfill again",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument(
        "--speed",
        type=float,
        default=float("inf"),
        help="simulated seconds per second during a backfill (default: as fast as possible); "
        "it never runs ahead of the clock, so once caught up it is real time",
    )
    p.add_argument(
        "--seed", type=int, default=7,
        help="random seed: the same seed gives the same fleet, signals and anomalies (default 7)",
    )
    p.add_argument("--labels", default=None, help="append injected-anomaly labels to this file")
    return p


def add_broker(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "broker", parents=[common], help="the embedded Kafka-compatible broker for local use")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    return p


def add_health(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "health", parents=[common],
        help="probe /health on the configured port: 0 ok/degraded, 1 otherwise",
    )
    return p


def add_migrate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    return sub.add_parser(
        "migrate", parents=[common],
        help="create or migrate the ClickHouse schema, views and retention, then exit",
    )


def add_query(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "query", parents=[common], help="run SQL on the configured ClickHouse and print a table")
    p.add_argument("sql", help="the query, in the configured database (default gridstream)")
    p.add_argument(
        "--max-rows", type=int, default=100, help="rows printed at most (default 100)"
    )
    return p


def add_backtest(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "backtest", parents=[common],
        help="the processor's code path over a CSV/Parquet file of readings, no Kafka",
        description="Reads meter readings (meter_id, ts, kw, optional kvar, voltage_v, "
        "current_a, quality; or SCADA readings with asset_id, asset_kind, p_mw, ...) and writes "
        "one output row per input row, in input order: anomaly_score, severity, p10/p50/p90 per "
        "forecast horizon, the expected value and the dead-letter reason of rejected rows. "
        "Parameters come from the processing settings (GRIDSTREAM_PROCESSING__*).",
    )
    p.add_argument("--input", required=True, help="CSV or Parquet file of readings")
    p.add_argument("--output", required=True, help="CSV to write (Parquet if it ends .parquet)")
    p.add_argument("--topology", help="with --scada: energy balance against this JSON-lines "
                   "topology (grid.topology records); rows to <output>.balance.csv")
    p.add_argument("--scada", help="with --topology: the transformers' SCADA readings")
    p.add_argument(
        "--batch-size",
        type=int,
        default=5000,
        help="readings per processed batch (default 5000; the output does not depend on it)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="input partitions of the live topic (default 1): each entity gets the core of the "
        "partition its key is produced to, as in `gridstream run`, so the output equals the live "
        "run's",
    )
    p.add_argument(
        "--models",
        default=None,
        help="a model store (its promoted set) or one model-set directory from `gridstream train`;"
        " without it: the online detectors and the baseline alone, as a fresh deployment",
    )
    p.add_argument(
        "--report", default=None, help="also write an interactive HTML report to this file"
    )
    p.add_argument(
        "--labels",
        default=None,
        help="labelled anomaly windows for the report: simulator labels (JSON lines) or NAB "
        "windows (JSON)",
    )
    return p


def add_report(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report", parents=[common],
        help="a self-contained interactive HTML report from ClickHouse: forecast bands against "
        "actuals, anomalies, labelled windows, error heatmaps",
    )
    p.add_argument("--since", default="7d", help="start: a UTC time or an age (default 7d)")
    p.add_argument("--until", default=None, help="end: a UTC time or an age (default now)")
    p.add_argument(
        "--entities",
        action="append",
        default=[],
        help="entity ids, comma-separated or repeated (default: every entity)",
    )
    p.add_argument("--labels", default=None, help="simulator labels or NAB windows file")
    p.add_argument("--output", default="gridstream-report.html", help="the HTML file to write")
    p.add_argument(
        "--max-points",
        type=int,
        default=25_000,
        help="readings drawn per entity at most; longer series are thinned (default 25000)",
    )
    return p


def add_bench(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench", parents=[common],
        help="throughput against the consume+decode ceiling, the core alone, memory (benchmarks/)",
    )
    p.add_argument("--quick", action="store_true", help="about a minute")
    p.add_argument("--json", default=None, help="results file (default benchmarks/results/)")
    return p


def add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", parents=[common],
        help="fit the nowcast ensemble from history; writes a versioned model set and promotes it "
        "only if it beats the current one",
    )
    p.add_argument("--input", required=True, help="CSV or Parquet file of readings (as backtest)")
    p.add_argument("--output", required=True, help="the model store directory")
    p.add_argument("--name", default="nowcast-ensemble", help="model set name")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the fit (default 0): reproducible sets"
    )
    p.add_argument("--max-iter", type=int, default=200, help="boosting iterations per model")
    p.add_argument("--no-promote", action="store_true", help="save the set but do not promote it")
    p.add_argument(
        "--report",
        default=None,
        help="the validation report's HTML file (default STORE/<set>-validation.html)",
    )
    return p


def add_config(sub: argparse._SubParsersAction, common: argparse.ArgumentParser
               ) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "config", parents=[common], help="the effective settings (`config show`), secrets masked"
    )
    action = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = action.add_parser(
        "show", parents=[common],
        help="print the settings from environment, file and defaults, secrets masked",
    )
    show.add_argument(
        "--format", choices=["toml", "json"], default="toml",
        help="toml (default; usable as a --config file once secrets are filled in) or json",
    )
    return p


COMMANDS = (
    add_run,
    add_demo,
    add_simulate,
    add_broker,
    add_health,
    add_migrate,
    add_query,
    add_backtest,
    add_report,
    add_bench,
    add_train,
    add_config,
)
