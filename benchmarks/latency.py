"""Latency from a reading's produce time to its forecast or anomaly event on the output topic.

A paced producer offers meter readings at fixed rates (1k/s, 10k/s), then a burst; `gridstream
run` (a separate process, default settings) consumes them; a reader in this process consumes the
forecasts and anomalies topics. A reading's latency is the time from just before its
``produce()`` call to the first output record issued from it reaching the reader (forecasts are
keyed by entity and ``issued_at``, which is the reading's ``ts``), so it includes the producer's
linger, the broker, the runner's batching and every output it writes before publishing
(ClickHouse comes first in the runner), and the reader's fetch.

Entities first get three readings each (their forecasts start at the third); the join of the
consumer group and that warm-up are not measured.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks.procs import RssSampler, runner_env, start_run, stop_run, topic_set
from sinks.encode import rfc3339_ms
from streams.config import KafkaSettings, Settings
from streams.runtime.runner import ensure_topics

PARTITIONS = 3
STEP_MS = 60_000  # one reading per entity per simulated minute


class _Reader(threading.Thread):
    """Consumes the output topics and stamps the first arrival of each reading's outputs."""

    def __init__(self, bootstrap: str, topics: list[str], index: dict[tuple[str, str], int],
                 arrived: np.ndarray, stamped: np.ndarray, inputs: tuple[str, np.ndarray]
                 ) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"lat-reader-{time.time_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in [*topics, inputs[0]]
             for p in range(PARTITIONS)]
        )
        self.index = index
        self.arrived = arrived
        self.stamped = stamped
        self.input_topic, self.floor = inputs
        self.stop = threading.Event()

    def run(self) -> None:
        loads, index, arrived, stamped = orjson.loads, self.index, self.arrived, self.stamped
        try:
            while not self.stop.is_set():
                msgs = self.consumer.consume(10_000, 0.02)
                now = time.perf_counter()
                for m in msgs:
                    if m.error() is not None:
                        continue
                    doc = loads(m.value())
                    if m.topic() == self.input_topic:  # the broker's own floor
                        i = index.get((doc["meter_id"], doc["ts"]))
                        if i is not None:
                            self.floor[i] = now
                        continue
                    i = index.get((doc["entity_id"], doc.get("issued_at") or doc.get("ts")))
                    if i is not None and arrived[i] != arrived[i]:  # NaN: first output wins
                        arrived[i] = now
                        stamped[i] = m.timestamp()[1] / 1000.0
        finally:
            self.consumer.close()


def _stats_ms(lat_s: np.ndarray) -> dict[str, float]:
    ms = 1000.0 * lat_s
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1), "max_ms": round(float(ms.max()), 1)}


def _wait_arrived(arrived: np.ndarray, lo: int, hi: int, timeout_s: float) -> int:
    """Wait until readings [lo, hi) all have an output (or the timeout); returns how many do."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = int(np.count_nonzero(~np.isnan(arrived[lo:hi])))
        if got == hi - lo or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def measure(
    bootstrap: str,
    tmp: Path,
    *,
    rates: tuple[int, ...] = (1000, 10_000),
    seconds: float = 5.0,
    burst: int = 20_000,
    entities: int = 1000,
    clickhouse: bool = True,
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    """One `gridstream run` process; warm-up, then each rate for ``seconds``, then a burst."""
    tag = f"lat-{'ch' if clickhouse else 'noch'}-{time.time_ns()}"
    topics = topic_set(tag)
    ensure_topics(Settings(kafka=KafkaSettings(bootstrap_servers=bootstrap,
                                               partitions=PARTITIONS), topics=topics))
    phases = [(r, int(r * seconds)) for r in rates] + [(0, burst)]
    total = 3 * entities + sum(n for _, n in phases)
    ids = np.array([f"lat{e:06d}" for e in range(entities)], dtype=object)
    ent = np.arange(total) % entities
    ts = int(time.time() * 1000) - (total // entities + 2) * STEP_MS + (np.arange(total)
                                                                          // entities) * STEP_MS
    rng = np.random.default_rng(3)
    kw = 1.0 + 0.3 * np.sin(np.arange(total) / 500.0) + 0.05 * rng.standard_normal(total)
    iso = rfc3339_ms(ts).tolist()
    keys = [ids[e].encode() for e in ent]
    values = [orjson.dumps({"meter_id": ids[e], "ts": int(t), "kw": float(v)})
              for e, t, v in zip(ent, ts, kw, strict=True)]
    index: dict[tuple[str, object], int] = {(ids[e], iso[i]): i for i, e in enumerate(ent)}
    index.update({(ids[e], int(ts[i])): i for i, e in enumerate(ent)})
    sent = np.full(total, np.nan)
    arrived = np.full(total, np.nan)
    sent_wall = np.full(total, np.nan)  # time.time(): the output records' timestamps are wall
    stamped = np.full(total, np.nan)
    floor = np.full(total, np.nan)

    reader = _Reader(bootstrap, [topics.forecasts, topics.anomalies], index, arrived, stamped,
                     (topics.meter, floor))
    reader.start()
    proc = start_run(runner_env(bootstrap, topics, f"{tag}-g", tmp / f"{tag}-chdb"
                                if clickhouse else None, PARTITIONS, **(env or {})))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "queue.buffering.max.messages": 1_000_000})
    produce, perf, wall = producer.produce, time.perf_counter, time.time
    report: dict[str, object] = {"clickhouse": "chdb" if clickhouse else "none",
                                 "entities": entities, "producer_linger_ms": 5}
    try:
        with RssSampler(proc.pid) as rss:
            for i in range(3 * entities):  # warm-up: group join, first forecasts
                sent[i] = perf()
                produce(topics.meter, values[i], keys[i])
            producer.flush(30)
            if _wait_arrived(arrived, 2 * entities, 3 * entities, 120) < entities:
                raise RuntimeError("latency: the runner produced no forecasts within 120 s")
            start = 3 * entities
            for rate, n in phases:
                t0 = perf()
                i, end = start, start + n
                while i < end:
                    due = end if rate == 0 else min(end, start + int((perf() - t0) * rate) + 1)
                    while i < due:
                        sent[i] = perf()
                        sent_wall[i] = wall()
                        try:
                            produce(topics.meter, values[i], keys[i])
                        except BufferError:
                            producer.poll(0.01)
                            continue
                        i += 1
                    producer.poll(0)
                    if rate:
                        time.sleep(0.0005)
                offered = n / (perf() - t0)
                producer.flush(30)
                got = _wait_arrived(arrived, start, end, 60)
                lat = (arrived[start:end] - sent[start:end])
                lat = lat[~np.isnan(lat)]
                phase: dict[str, object] = {"readings": n, "offered_rps": round(offered),
                                            "with_output": got, **_stats_ms(lat)}
                # the runner's own share: up to its produce() of the output (record timestamp)
                own = stamped[start:end] - sent_wall[start:end]
                phase["to_output_timestamp"] = _stats_ms(own[~np.isnan(own)])
                # the floor: the same reading readable on the input topic by a plain consumer
                raw = floor[start:end] - sent[start:end]
                phase["broker_floor"] = _stats_ms(raw[~np.isnan(raw)])
                if rate == 0:
                    phase["drain_s"] = round(float(np.nanmax(arrived[start:end]) - sent[start]), 2)
                report["burst" if rate == 0 else f"{rate}_per_s"] = phase
                start = end
                time.sleep(1.0)  # let the queue empty before the next phase
    finally:
        reader.stop.set()
        reader.join(10)
        status, tail = stop_run(proc)
    if status != 0:
        raise RuntimeError(f"latency: gridstream run exited {status}: {tail}")
    mb = [m for _, m in rss.samples]
    if mb:
        report["runner_rss_mb"] = {"start": round(mb[0], 1), "max": round(max(mb), 1),
                                   "end": round(mb[-1], 1)}
    return report


def main() -> None:
    import argparse
    import json
    import tempfile

    from streams.tools.broker import EmbeddedBroker

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--no-clickhouse", action="store_true")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the runner")
    args = ap.parse_args()
    env = dict(e.split("=", 1) for e in args.env)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        out = measure(broker.bootstrap, Path(tmp), seconds=args.seconds,
                      clickhouse=not args.no_clickhouse, env=env)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
