"""``gridstream bench``: throughput of the pipeline against the machine's own ceiling, in one run.

On a fresh embedded broker, the same simulated readings are measured three ways:
1. ceiling: raw confluent-kafka batch consume + orjson decode, readings/s;
2. pipeline: ``gridstream run``'s loop (validate, windows, detectors, fusion, forecasts and
   anomalies produced and acknowledged, ClickHouse writes in chDB, commits), readings/s, and its
   ratio to the ceiling;
3. core: the same readings decoded and processed in memory (no Kafka), readings/s.
Then the resident memory of the core with 100k active entities (a subprocess, so other runs do not
count). Compare ratios, not absolute numbers: the machines are small and shared.

Not measured yet (reported as null with a reason): latency at fixed offered rates, scaling over
processes. The faust-streaming and Quix Streams peers and the faust engine: faust_reference.py.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from models.processor import GridProcessor
from schemas.decode import decode_batch
from sinks.clickhouse_backend import ChdbBackend
from streams.broker import EmbeddedBroker
from streams.config import ClickHouseSettings, KafkaSettings, Settings, TopicSettings
from streams.runner import StreamRunner, ensure_topics
from streams.simulation import SimConfig, TelemetrySimulator
from streams.wiring import clickhouse_sink

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
            batch_timeout_s=0.2,
            session_timeout_ms=6000,
        ),
        topics=topics,
        clickhouse=ClickHouseSettings(path=chdb, database="bench"),
        http_port=0,
    )
    backend = ChdbBackend(chdb)
    sink = clickhouse_sink(settings, backend)
    assert sink is not None
    sink.ensure_schema()
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

    runner = StreamRunner(
        settings, GridProcessor(settings.processing.params()), sink, on_batch=on_batch
    )
    thread = threading.Thread(target=runner.run, args=(done,), daemon=True)
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


_RSS_SCRIPT = """
import time, numpy as np
from models.processor import GridProcessor
from schemas.batch import ReadingBatch

def status(field):  # /proc, not getrusage: ru_maxrss survives exec and reports the parent's peak
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0

base_rss = status("VmRSS")
n, steps = {entities}, 20
proc = GridProcessor()
ids = np.array([f"m{{i:07d}}" for i in range(n)], dtype=object)
kinds = np.array(["meter"] * n, dtype=object)
nan = np.full(n, np.nan)
base = int(time.time() * 1000) - steps * 900_000
rng = np.random.default_rng(0)
for k in range(steps):
    ts = np.full(n, base + k * 900_000, dtype=np.int64)
    v = 1.0 + 0.1 * rng.standard_normal(n)
    b = ReadingBatch(ids, kinds, ts, v, nan, 230.0 + nan * 0, nan, nan, nan,
                     np.full(n, None, dtype=object), np.arange(n))
    proc.process_batch(b, int(ts[0]))
peak = status("VmHWM")
print(peak, proc.state.nbytes() / 1e6, base_rss)
"""


def rss_mb(entities: int) -> dict[str, float]:
    """Peak RSS (MB) of a process whose core holds ``entities`` warm entities."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT.format(entities=entities)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    peak, state, base = (float(x) for x in out.stdout.split())
    return {"rss_mb": peak, "state_mb": state, "imports_mb": base}


def run(quick: bool = False, json_path: Path | None = None) -> dict[str, object]:
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
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=PARTITIONS),
            topics=topics,
        )
        ensure_topics(settings)
        _produce(broker.bootstrap, topics.meter, values)
        report["ceiling_rps"] = round(ceiling(broker.bootstrap, topics.meter, n))
        pipe = pipeline(broker.bootstrap, topics, n, Path(tmp) / "chdb")
        report["pipeline_rps"] = round(pipe["rps"])
        report["pipeline_batches"] = int(pipe["batches"])
        from benchmarks.faust_reference import peer_figures  # issue 6: faust/Quix peers

        report.update(peer_figures(broker.bootstrap, topics.model_dump(exclude={"labels"}), n,
                                   Path(tmp), PARTITIONS, quick, report["pipeline_rps"]))
    report["pipeline_to_ceiling"] = round(report["pipeline_rps"] / report["ceiling_rps"], 4)  # type: ignore[operator]
    c = core(values)
    report["core_rps"] = round(c["rps"])
    report["core_stages_rps"] = {
        "decode": round(c["decode_rps"]),
        "core": round(c["core_only_rps"]),
    }
    mem = rss_mb(10_000 if quick else 100_000)
    report["rss_mb_100k_entities" if not quick else "rss_mb_10k_entities"] = round(mem["rss_mb"], 1)
    report["state_mb"] = round(mem["state_mb"], 1)
    report["rss_mb_after_imports"] = round(mem["imports_mb"], 1)
    report["p99_latency_ms"] = None
    report["latency_error"] = "not measured yet: fixed-rate latency runs are still to be built"
    report["bench_process_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1
    )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="about a minute: 500 meters, 2 days")
    ap.add_argument("--json", type=Path, default=RESULTS / "bench.json")
    args = ap.parse_args(argv)
    report = run(args.quick, args.json)
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
