"""``gridstream bench``: throughput, latency, memory and scaling of the pipeline, in one run.

On a fresh embedded broker, with the same simulated readings:
1. ceiling: raw confluent-kafka batch consume + orjson decode, readings/s;
2. pipeline: ``gridstream run``'s loop in this process (validate, windows, detectors, fusion,
   forecasts and anomalies produced and acknowledged, ClickHouse writes in chDB, commits, the run
   command's GC policy), readings/s, and its ratio to the ceiling;
3. core: decode + the core in memory, readings/s, and every stage in µs per reading
   (``benchmarks.stages``: JSON parse, validation, the core's parts, encoding, ClickHouse);
   the energy balance core's µs per reading (``benchmarks.quality_balance.cost_per_reading``);
4. latency (``benchmarks.latency``): produce -> output event at 1k/s, 10k/s and a burst, against
   a separate ``gridstream run`` process, with chDB and with ClickHouse off;
5. memory (``benchmarks.memory``): RSS with 1k/10k/100k warm entities and over a long run;
6. scaling (``benchmarks.scaling``): 1 and 2 processes in one consumer group.
7. peers (``benchmarks.faust_reference``): the faust-streaming and Quix Streams references and
   ``--engine faust``, on the same readings. Compare
ratios within one run, not absolute numbers across runs: the machines are small and shared.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks import decode_formats, latency, memory, scaling
from benchmarks.quality_balance import cost_per_reading
from benchmarks.stages import STAGES, stage_loop
from models.processor import GridProcessor
from schemas.decode import decode_batch
from sinks.clickhouse import ClickHouseSink
from sinks.clickhouse_backend import ChdbBackend
from streams.config import ClickHouseSettings, KafkaSettings, Settings, TopicSettings
from streams.ops.progress import Progress, wanted
from streams.runtime.runner import StreamRunner, ensure_topics
from streams.runtime.workers import gc_policy
from streams.service import Assembly, build_service
from streams.sim.generator import SimConfig, TelemetrySimulator
from streams.tools.broker import EmbeddedBroker

RESULTS = Path(__file__).resolve().parent / "results"
DAY_MS = 86_400_000
PARTITIONS = 3


def _records(meters: int, days: float) -> list[bytes]:
    now = int(time.time() * 1000)
    sim = TelemetrySimulator(
        SimConfig(
            meters=meters,
            assets=0,
            seed=5,
            missing_rate=0,
            late_rate=0,
            duplicate_rate=0,
            anomaly_rate_per_day=0.2,
        ),
        now - int(days * DAY_MS),
    )
    return sim.step_until(now - 60_000).value


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for i, value in enumerate(values):
        key = value[13:26]  # inside the meter id: spreads meters over partitions
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("benchmark input not fully produced")


def ceiling(bootstrap: str, topic: str, n: int, batch: int = 10_000) -> float:
    """Readings/s of raw batch consume + orjson decode: what any Python consumer pays."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ceiling-{time.time_ns()}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 << 20,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen, counted, start = 0, 0, 0.0
    loads = orjson.loads
    try:
        while seen < n:
            # never ask for more than is left: consume() waits its whole timeout for a full batch
            msgs = consumer.consume(min(batch, n - seen), 5.0)
            if not msgs:
                raise RuntimeError(f"ceiling: only {seen} of {n} records came back")
            for m in msgs:
                loads(m.value())
            if seen == 0:  # connection and first fetch are set-up, not throughput
                start = time.perf_counter()
            else:
                counted += len(msgs)
            seen += len(msgs)
        return counted / (time.perf_counter() - start)
    finally:
        consumer.close()


def pipeline(bootstrap: str, topics: TopicSettings, n: int, chdb: Path) -> dict[str, float]:
    """Readings/s of the full processor loop from its first batch to its last commit."""
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            group_id=f"bench-{time.time_ns()}",
            partitions=PARTITIONS,
            batch_size=10_000,
            session_timeout_ms=6000,
        ),
        topics=topics,
        clickhouse=ClickHouseSettings(path=chdb, database="bench"),
        http_port=0,
    )
    backend = ChdbBackend(chdb)
    marks: list[float] = []
    done = threading.Event()
    consumed = [0]

    def on_batch(report: object) -> None:
        now = time.perf_counter()
        if not marks:
            marks.append(now - report.duration_s)  # type: ignore[attr-defined]
        consumed[0] += report.consumed  # type: ignore[attr-defined]
        marks[1:] = [now]
        if consumed[0] >= n:
            done.set()

    service = build_service(settings, Assembly(backend=backend, on_batch=on_batch))
    service.ensure_schema()
    runner = service.engine
    assert isinstance(runner, StreamRunner)
    thread = threading.Thread(target=runner.run, args=(done,), daemon=True)
    with gc_policy():  # as `gridstream run` does
        thread.start()
        if not done.wait(900):
            raise RuntimeError(f"pipeline: {consumed[0]} of {n} records processed in 15 minutes")
        thread.join(60)
    backend.close()
    seconds = marks[-1] - marks[0]
    return {
        "rps": consumed[0] / seconds,
        "seconds": seconds,
        "batches": float(runner.stats.batches),
    }


def core(values: list[bytes], batch: int = 10_000) -> dict[str, float]:
    """Readings/s of decode + the core in memory, and each stage's share."""
    proc = GridProcessor()
    contracts = ["meter"] * len(values)
    now = int(time.time() * 1000)
    t_decode = t_core = 0.0
    for i in range(0, len(values), batch):
        t0 = time.perf_counter()
        decoded = decode_batch(
            values[i : i + batch],
            contracts[i : i + batch],
            now_ms=now,
            max_age_ms=60 * DAY_MS,
            max_future_ms=300_000,
        )
        t1 = time.perf_counter()
        proc.process_batch(decoded.readings, now)
        t_decode += t1 - t0
        t_core += time.perf_counter() - t1
    n = len(values)
    return {"rps": n / (t_decode + t_core), "decode_rps": n / t_decode, "core_only_rps": n / t_core}


def stages_us(values: list[bytes], chdb: Path, batch: int = 10_000) -> dict[str, float]:
    """µs per reading of every stage (``benchmarks.stages``), with chDB on ``chdb``.

    ``json_parse`` is ``orjson.loads`` alone (what the ceiling pays); ``validate`` is the rest of
    the decoder (type and range checks, columns).
    """
    n = len(values)
    started = time.perf_counter()
    for v in values:
        orjson.loads(v)
    parse = time.perf_counter() - started
    backend = ChdbBackend(chdb)
    try:
        sink = ClickHouseSink(backend, "stages")
        sink.ensure_schema()
        with gc_policy():
            t = stage_loop(values, ["meter"] * n, int(time.time() * 1000), batch, sink)
    finally:
        backend.close()
    out = {"json_parse": parse, "validate": t["decode"] - parse,
           **{k: t[k] for k in STAGES if k != "decode"}}
    us = {k: round(1e6 * v / n, 2) for k, v in out.items()}
    us["total"] = round(sum(us.values()), 2)
    return us


def _summary(report: dict[str, object]) -> list[tuple[str, str]]:
    """The short table printed at the end: the headline keys and what they mean."""
    lat = report["latency"]["chdb"]  # type: ignore[index]
    kafka = report["latency"]["kafka_only"]  # type: ignore[index]
    mem = report["memory"]  # type: ignore[index]
    sc = report["scaling"]  # type: ignore[index]

    def pct(block: dict[str, object]) -> str:
        return f"p50 {block['p50_ms']} / p95 {block['p95_ms']} / p99 {block['p99_ms']} / " \
               f"max {block['max_ms']} ms"

    rows = [
        ("ceiling_rps", f"{report['ceiling_rps']:,}"),
        ("pipeline_rps", f"{report['pipeline_rps']:,} ({report['pipeline_to_ceiling']:.3f} of "
                         "the ceiling)"),
        ("core_rps", f"{report['core_rps']:,}"),
        ("stages µs/reading", ", ".join(f"{k} {v}" for k, v in report["stages_us"].items())),  # type: ignore[attr-defined]
        ("decode µs/reading", ", ".join(
            f"{k} {v}" for k, v in report["decode_us_per_reading"].items())),  # type: ignore[attr-defined]
        ("balance µs/reading", f"{report['balance_us_per_reading']} (energy balance core, "
                               f"{report['balance_meters']:,} meters)"),
        ("p99_latency_ms", f"{report['p99_latency_ms']} (10k/s, chDB)"),
    ]
    for name, block in (("chdb", lat), ("kafka_only", kafka)):
        for phase in ("1000_per_s", "10000_per_s", "burst"):
            rows.append((f"latency {name} {phase}", pct(block[phase])))
    rows += [
        ("rss_mb_1k/10k/100k", " / ".join(
            str(mem["by_entities"][k]["rss_mb"]) for k in ("1000", "10000", "100000"))),
        ("long run", f"{mem['long_run']['readings']:,} readings: {mem['long_run']['rss_mb_half']}"
                     f" -> {mem['long_run']['rss_mb_end']} MB, slope "
                     f"{mem['long_run']['slope_mb_per_million_readings']} MB per 1M readings"),
    ]
    for shape in ("chdb", "workers"):
        s = sc[shape]
        rows.append((f"scaling {shape}", f"1 proc {s['1']['rps']:,}/s, 2 procs {s['2']['rps']:,}"
                                         f"/s (x{s['ratio_2_to_1']})"))
    rows.append(("faust_rps", f"{report.get('faust_rps')} (faust-streaming reference; native "
                              f"pipeline x{report.get('pipeline_to_faust')})"))
    rows.append(("faust_engine_rps", f"{report.get('faust_engine_rps')} (--engine faust)"))
    quix = report.get("quix_rps")
    why = f"null: {report.get('quix_error')}"
    rows.append(("quix_rps", f"{quix} (Quix Streams reference)" if quix is not None else why))
    return rows


PHASES = 8  # the ``phase`` calls below


def run(quick: bool = False, json_path: Path | None = None, progress: Progress | None = None
        ) -> dict[str, object]:
    progress = progress or Progress(False)
    task = progress.task("bench: generating readings", total=PHASES)

    def phase(name: str) -> None:
        progress.advance(task, description=f"bench: {name}")

    meters, days = (500, 2.0) if quick else (2000, 4.0)
    values = _records(meters, days)
    n = len(values)
    topics = TopicSettings(
        meter="bench.meter",
        scada="bench.scada",
        forecasts="bench.forecasts",
        anomalies="bench.anomalies",
        dead_letters="bench.deadletter",
    )
    report: dict[str, object] = {"readings": n, "meters": meters, "quick": quick}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=PARTITIONS),
            topics=topics,
        )
        ensure_topics(settings)
        phase("producing")
        _produce(broker.bootstrap, topics.meter, values)
        phase("consume ceiling, then the pipeline")
        report["ceiling_rps"] = round(ceiling(broker.bootstrap, topics.meter, n))
        pipe = pipeline(broker.bootstrap, topics, n, tmp / "chdb")
        report["pipeline_rps"] = round(pipe["rps"])
        report["pipeline_batches"] = int(pipe["batches"])
        report["pipeline_to_ceiling"] = round(pipe["rps"] / report["ceiling_rps"], 4)  # type: ignore[operator]
        phase("the core alone, then stages")
        with gc_policy():
            c = core(values)
        report["core_rps"] = round(c["rps"])
        report["stages_us"] = stages_us(values, tmp / "chdb")
        report["decode_us_per_reading"] = decode_formats.measure(5_000 if quick else 20_000)
        report.update(cost_per_reading(*((200, 2) if quick else (2000, 3))))
        seconds, burst = (3.0, 10_000) if quick else (10.0, 30_000)
        phase("latency")
        lat = {
            "chdb": latency.measure(broker.bootstrap, tmp, seconds=seconds, burst=burst),
            "kafka_only": latency.measure(broker.bootstrap, tmp, seconds=seconds, burst=burst,
                                          clickhouse=False),
        }
        report["latency"] = lat
        report["p99_latency_ms"] = lat["chdb"]["10000_per_s"]["p99_ms"]  # type: ignore[index]
        phase("scaling")
        report["scaling"] = scaling.measure(broker.bootstrap, tmp, values[: n // 2])
        from benchmarks.faust_reference import peer_figures  # faust/Quix peers, same readings

        phase("faust and Quix references")

        report.update(peer_figures(broker.bootstrap, topics.model_dump(exclude={"labels"}), n,
                                   Path(tmp), PARTITIONS, quick, report["pipeline_rps"]))
    phase("memory")
    by_entities = memory.rss_by_entities()
    report["memory"] = {
        "by_entities": by_entities,
        "long_run": memory.long_run(*((5000, 100) if quick else (10_000, 400))),
    }
    for k in ("1000", "10000", "100000"):
        report[f"rss_mb_{int(k) // 1000}k_entities"] = by_entities[k]["rss_mb"]  # type: ignore[index]
    report["bench_process_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1
    )
    phase("done")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="about a minute: 500 meters, 2 days")
    ap.add_argument("--json", type=Path, default=RESULTS / "bench.json", help="results file")
    ap.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    with Progress(wanted(args.quiet)) as progress:
        report = run(args.quick, args.json, progress)
    rows = _summary(report)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"wrote {args.json} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
