"""Peer references for ``gridstream bench``: the same rolling-window job in faust-streaming and
Quix Streams, and gridstream's own core run as a faust-streaming worker (``--engine faust``).

The references are written the way each framework's documentation teaches: one event at a time,
per-entity state in the framework's table (faust ``Table``, Quix ``State``, both with a changelog
topic), a rolling mean and z-score, one output record per event. They answer "what would the
idiomatic job cost on this machine", so the native pipeline's figure has a peer to be read
against. Each runs in its own process (``python -m benchmarks.faust_reference ...``), so no event
loop, thread or chDB path of a framework touches the harness; the child prints one ``RESULT``
line of JSON. Throughput counts from the first event received to the last output acknowledged.

Quix Streams pins ``confluent-kafka<2.13`` while gridstream runs a newer one, so it cannot share
gridstream's environment: it runs from its own virtualenv (``QUIX_PYTHON``, see
benchmarks/README.md), and when that is missing the reason is returned instead of a figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUIX_PYTHON = ROOT / ".venv" / "quix" / "bin" / "python"
QUIX_SCRIPT = Path(__file__).resolve().parent / "quix_reference.py"
WINDOW = 96  # one day of 15-minute readings
SESSION_TIMEOUT_S = 6.0  # the embedded broker completes a group join in about half of it


# -- the faust-streaming reference job (runs in the child) ----------------------------------
def reference_app(bootstrap: str, topic: str, out_topic: str, n: int, datadir: str) -> Any:
    """The idiomatic faust job: an agent over events, a Table of per-meter windows."""
    import faust
    import orjson

    app = faust.App(
        f"faust-ref-{time.time_ns()}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=datadir,
        web_enabled=False,
        autodiscover=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0,
    )
    readings = app.topic(topic, key_serializer="raw", value_serializer="raw")
    scores = app.topic(out_topic, key_serializer="raw", value_serializer="raw")
    partitions = len(_partitions(bootstrap, topic))
    windows = app.Table("windows", default=list, partitions=partitions)
    marks: dict[str, float] = {}
    seen = [0]

    @app.agent(readings)
    async def score(stream: Any) -> None:
        async for event in stream.events():
            if not seen[0]:
                marks["start"] = time.perf_counter()
            doc = orjson.loads(event.value)
            entity = doc["meter_id"]
            window = windows[entity]
            z = 0.0
            if len(window) >= 2:
                mean = sum(window) / len(window)
                var = sum((x - mean) ** 2 for x in window) / (len(window) - 1)
                z = (doc["kw"] - mean) / var**0.5 if var > 0 else 0.0
            window.append(doc["kw"])
            windows[entity] = window[-WINDOW:]  # a changelog record per event, as faust does
            out = {"meter_id": entity, "ts": doc["ts"], "z": z, "anomaly": abs(z) > 4.0}
            await scores.send(key=event.key, value=orjson.dumps(out))
            seen[0] += 1
            if seen[0] == n:
                await app.producer.flush()
                seconds = time.perf_counter() - marks["start"]
                _result({"events": n, "seconds": seconds, "rps": (n - 1) / seconds})
                app.loop.call_soon(_stop_worker, app)

    return app


def _stop_worker(app: Any) -> None:
    """Ask the worker to stop as a signal would (mode has no public stop-from-inside call)."""
    import signal

    app._worker_ref._schedule_shutdown(signal.SIGTERM)  # noqa: SLF001 - see docstring


def _result(doc: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(doc), flush=True)


def _partitions(bootstrap: str, topic: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return sorted(meta.topics[topic].partitions)


def run_reference(bootstrap: str, topic: str, n: int) -> None:
    """Child entry point: run the reference worker until ``n`` events are scored."""
    import logging

    import faust

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        app = reference_app(bootstrap, topic, f"{topic}.faust-ref-out", n, tmp)
        worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
        app._worker_ref = worker  # noqa: SLF001 - read by _stop_worker
        try:
            worker.execute_from_commandline()
        except SystemExit:
            pass


# -- the parent side ------------------------------------------------------------------------
def _child(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    """Run a child; its RESULT line as a dict, or {"error": ...} naming what went wrong."""
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout_s:.0f} s: {' '.join(cmd[1:4])}"}
    for line in out.stdout.splitlines():
        if "RESULT " in line:  # a framework's terminal spinner may precede it on the line
            return dict(json.loads(line.split("RESULT ", 1)[1]))
    tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {out.returncode}: " + " | ".join(tail)[-600:]}


def measure_faust_reference(
    bootstrap: str, topic: str, n: int, timeout_s: float = 900.0
) -> dict[str, Any]:
    """Events/s of the idiomatic faust job over the first ``n`` readings of ``topic``.

    Returns ``{"rps", "events", "seconds"}`` or ``{"error": reason}``.
    """
    cmd = [sys.executable, "-m", "benchmarks.faust_reference", "reference",
           "--bootstrap", bootstrap, "--topic", topic, "--n", str(n)]
    return _child(cmd, timeout_s)


def _make_quix_venv() -> None:
    """Quix Streams gets a virtualenv of its own (its confluent-kafka pin clashes with ours)."""
    venv = QUIX_PYTHON.parent.parent
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(QUIX_PYTHON), "-m", "pip", "install", "--quiet", "quixstreams", "orjson"],
            check=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"could not create {venv} for the Quix Streams reference: {exc}", file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)


def measure_quix(
    bootstrap: str, topic: str, n: int, python: Path | None = None, timeout_s: float = 900.0
) -> dict[str, Any]:
    """Events/s of the idiomatic Quix Streams job, run by ``python`` (default ``QUIX_PYTHON``)."""
    python = python or QUIX_PYTHON
    if not Path(python).exists() and python == QUIX_PYTHON:
        _make_quix_venv()
    if not Path(python).exists():
        return {"error": (
            "quixstreams is not installed: it pins confluent-kafka<2.13 and gridstream needs a "
            f"newer one, so it needs its own virtualenv at {python}, and creating it failed "
            "(benchmarks/README.md)"
        )}
    cmd = [str(python), str(QUIX_SCRIPT), "--bootstrap", bootstrap, "--topic", topic,
           "--n", str(n), "--window", str(WINDOW)]
    return _child(cmd, timeout_s)


def measure_faust_engine(
    bootstrap: str, topics: dict[str, str], n: int, chdb: Path, partitions: int,
    batch_size: int = 10_000, timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Readings/s of ``gridstream run --engine faust`` (full pipeline, chDB at ``chdb``)."""
    cmd = [sys.executable, "-m", "benchmarks.faust_reference", "engine",
           "--bootstrap", bootstrap, "--topics", json.dumps(topics), "--n", str(n),
           "--chdb", str(chdb), "--partitions", str(partitions),
           "--batch-size", str(batch_size)]
    return _child(cmd, timeout_s)


def peer_figures(
    bootstrap: str, topics: dict[str, str], n: int, tmp: Path, partitions: int,
    quick: bool, pipeline_rps: float | None = None,
) -> dict[str, Any]:
    """The harness's peer figures, each over the first readings of ``topics["meter"]``.

    The per-event references run at a few thousand events/s, so they take a prefix of the
    readings (20k quick, 60k full); the faust engine takes up to 100k (quick: all of them).
    """
    report: dict[str, Any] = {}
    for key, result in (
        ("faust", measure_faust_reference(bootstrap, topics["meter"], min(n, 20_000 if quick
                                                                          else 60_000))),
        ("faust_engine", measure_faust_engine(bootstrap, topics, min(n, 100_000),
                                              tmp / "chdb-faust", partitions)),
        ("quix", measure_quix(bootstrap, topics["meter"], min(n, 20_000 if quick else 60_000))),
    ):
        if "error" in result:
            report[f"{key}_rps"], report[f"{key}_error"] = None, result["error"]
        else:
            report[f"{key}_rps"], report[f"{key}_events"] = round(result["rps"]), result["events"]
    if pipeline_rps and report.get("faust_rps"):
        report["pipeline_to_faust"] = round(pipeline_rps / report["faust_rps"], 1)
    return report


def run_engine(args: argparse.Namespace) -> None:
    """Child entry point: the faust engine over ``n`` readings, timed like the native pipeline."""
    import logging

    from sinks.clickhouse_backend import ChdbBackend
    from streams.config import ClickHouseSettings, KafkaSettings, Settings, TopicSettings
    from streams.runtime.faust_engine import FaustEngine
    from streams.runtime.wiring import clickhouse_sink

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=args.bootstrap, group_id=f"bench-faust-{time.time_ns()}",
            partitions=args.partitions, batch_size=args.batch_size, batch_timeout_s=0.2,
            session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        ),
        topics=TopicSettings(**json.loads(args.topics)),
        clickhouse=ClickHouseSettings(path=Path(args.chdb), database="bench_faust"),
        http_port=0,
    )
    backend = ChdbBackend(Path(args.chdb))
    sink = clickhouse_sink(settings, backend)
    assert sink is not None
    sink.ensure_schema()
    marks: list[float] = []
    consumed = [0]
    engine: FaustEngine

    def on_batch(report: Any) -> None:
        now = time.perf_counter()
        if not marks:
            marks.append(now - report.duration_s)
        marks[1:] = [now]
        consumed[0] += report.consumed
        if consumed[0] >= args.n:
            engine.stop()

    engine = FaustEngine(settings, clickhouse=sink, on_batch=on_batch)
    try:
        stats = engine.run()
    finally:
        backend.close()  # chDB must be closed before exit, or its shutdown may crash
    seconds = marks[-1] - marks[0]
    _result({"rps": consumed[0] / seconds, "events": consumed[0], "seconds": seconds,
             "batches": stats.batches})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="peer reference jobs (children of the harness)")
    ap.add_argument("job", choices=["reference", "engine"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic")
    ap.add_argument("--topics", help="engine: TopicSettings as JSON")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--chdb")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=10_000)
    args = ap.parse_args(argv)
    if args.job == "reference":
        run_reference(args.bootstrap, args.topic, args.n)
    else:
        run_engine(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
