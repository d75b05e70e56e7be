"""The ``gridstream`` commands that work on files and ClickHouse, not on Kafka: backtest,
report, train. Part of the CLI edge (``streams.cli``): settings and files are read here."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from streams.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from models.params import ProcessorParams
    from schemas.batch import ReadingBatch
    from streams.tools.backtest import BacktestResult


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_backtest(args: argparse.Namespace) -> int:
    from collections import Counter
    from pathlib import Path

    for flag, value in (("--batch-size", args.batch_size), ("--partitions", args.partitions)):
        if value < 1:
            print(f"gridstream: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    params = _settings(args).processing.params()
    ensemble = None
    if args.models:
        from models.ensemble import load_ensemble

        ensemble = load_ensemble(args.models)
        params = replace(
            params, horizons_s=tuple(sorted(set(params.horizons_s) | set(ensemble.horizons)))
        )
        print(
            f"using model set {ensemble.ref} (horizons {', '.join(map(str, ensemble.horizons))} s)"
        )
    started = time.perf_counter()
    collector = None
    if args.report:
        from streams.tools.report_input import BacktestCollector

        collector = BacktestCollector()
    result = _backtest_with_progress(args, params, ensemble, collector)
    c = result.counters
    dead = Counter(x for x in result.dead_letter if x is not None)
    sev = Counter(ev.severity for ev in result.events)
    print(
        f"backtest: {len(result):,} rows in {time.perf_counter() - started:.1f} s -> "
        f"{args.output}; scored {c['scored']:,}, warming up {c['warming_up']:,}, "
        f"duplicates dropped {c['dropped_duplicate']:,}, dead letters {sum(dead.values()):,}"
        + (f" ({', '.join(f'{k} {v:,}' for k, v in dead.most_common())})" if dead else "")
    )
    print(
        f"anomaly events: critical {sev['critical']:,}, warning {sev['warning']:,}, "
        f"info {sev['info']:,} (horizons {', '.join(f'{h} s' for h in params.horizons_s)})"
    )
    if getattr(args, "topology", None) and getattr(args, "scada", None):
        _balance(args)
    if collector is not None:
        from streams.tools.report import write_report
        from streams.tools.report_input import load_labels

        labels = load_labels(Path(args.labels)) if args.labels else None
        inp = collector.report_input(
            f"gridstream backtest: {Path(args.input).name}", f"backtest of {args.input}",
            params.horizons_s, result.events, labels,
        )
        print(write_report(inp, Path(args.report)).line())
    return 0


def _backtest_with_progress(
    args: argparse.Namespace, params: ProcessorParams, ensemble: object, collector: object
) -> BacktestResult:
    """Read, backtest and write the files, each step shown on stderr (``streams.ops.progress``)."""
    from pathlib import Path

    from streams.ops.progress import Progress, wanted
    from streams.tools.backtest import backtest_frame, read_input, write_output

    with Progress(wanted(args.quiet)) as progress:
        step = progress.task(f"reading {args.input}")
        frame = read_input(Path(args.input))
        progress.finish(step)
        rows = progress.task("backtest", total=len(frame))

        def on_batch(batch: object, res: object) -> None:
            progress.advance(rows, len(batch))  # type: ignore[arg-type]
            if collector is not None:
                collector(batch, res)  # type: ignore[arg-type]

        table, result = backtest_frame(
            frame, params, args.batch_size, ensemble, on_batch, partitions=args.partitions
        )
        step = progress.task(f"writing {args.output}")
        write_output(table, Path(args.output))
        progress.finish(step)
    return result
def _balance(args: argparse.Namespace) -> None:
    """``backtest --topology T --scada S``: the energy balance of the input meters."""
    from pathlib import Path

    from streams.tools.backtest_balance import balance_files

    output = Path(args.output).with_suffix(".balance.csv")
    out, refused = balance_files(Path(args.input), Path(args.scada), Path(args.topology), output)
    for r in refused:
        print(f"topology line {r.src_index + 1} refused: {r.error_class}: {r.error}")
    rows = sum(len(r) for r in out.rows)
    print(f"energy balance: {rows:,} transformer-intervals -> {output}; "
          f"{len(out.events)} balance events, {out.late:,} late readings")


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.runtime.wiring import clickhouse_backend
    from streams.tools.report import write_report
    from streams.tools.report_input import from_clickhouse, load_labels, since_ms

    settings = _settings(args)
    now_ms = int(time.time() * 1000)
    start = since_ms(args.since, now_ms)
    until = since_ms(args.until, now_ms) if args.until else None
    entities = [e.strip() for item in args.entities for e in item.split(",") if e.strip()]
    labels = load_labels(Path(args.labels)) if args.labels else None
    backend = clickhouse_backend(settings)
    if backend is None:
        raise ConfigError("GRIDSTREAM_CLICKHOUSE__BACKEND is 'none': there is nothing to report")
    try:
        inp = from_clickhouse(
            backend, settings.clickhouse.database, start, until, entities or None, labels
        )
    finally:
        backend.close()
    print(write_report(inp, Path(args.output), args.max_points).line())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.training import train_model_set
    from streams.ops.progress import Progress, wanted
    from streams.tools.backtest import read_input, reading_batches

    params = _settings(args).processing.params()
    started = time.perf_counter()
    with Progress(wanted(args.quiet)) as progress:
        step = progress.task(f"reading {args.input}")
        batches, rejected = reading_batches(read_input(Path(args.input)))
        progress.finish(step)
        rows = sum(len(b) for b in batches)
        if rejected:
            print(f"train: {rejected:,} rows of {args.input} are not valid readings; skipped")
        fitting: list[int] = []

        def replayed() -> Iterator[ReadingBatch]:
            """The history batch by batch; then the fit runs (a spinner: it has no steps)."""
            yield from progress.track(batches, "replaying history", total=len(batches))
            fitting.append(progress.task(f"fitting the ensemble (max {args.max_iter} iter)"))

        path, metrics, decision = train_model_set(
            replayed(),
            params,
            Path(args.output),
            name=args.name,
            seed=args.seed,
            max_iter=args.max_iter,
            promote=not args.no_promote,
        )
        for task in fitting:
            progress.finish(task)
    print(f"trained {path.name} on {rows:,} readings in {time.perf_counter() - started:.1f} s")
    for h in params.horizons_s:
        print(
            f"  horizon {h:>5} s: validation MAE {metrics[f'h{h}_validation_mae']:.4g} "
            f"(baseline {metrics[f'h{h}_baseline_mae']:.4g}), p10-p90 coverage "
            f"{100 * metrics[f'h{h}_validation_coverage_p10_p90']:.1f} %"
        )
    print(
        f"  validation error {metrics['validation_error']:.4f} "
        f"(baseline {metrics['baseline_error']:.4f}, in forecast-scale units)"
    )
    if decision is not None:
        print(
            f"promotion: {'promoted' if decision.promoted else 'not promoted'}: {decision.reason}"
        )
    from streams.tools.report_validation import write_validation_report

    report = Path(args.report) if args.report else path.parent / f"{path.name}-validation.html"
    write_validation_report(batches, params, path, metrics, report)
    print(f"validation report (quantile calibration, error by horizon): {report}")
    return 0
