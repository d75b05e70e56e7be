"""Start-to-first-batch of `gridstream run` after a kill -9, with and without static membership.

For each mode: a worker starts against a topic that keeps receiving readings, processes a few
seconds, is killed with SIGKILL, and a new process (same settings, same host, so the same
group.instance.id) starts at once. The figure is the time from spawning a process to its first
completed batch (`batches` in /health), for the first life and for the life after the kill.

    python -m benchmarks.rejoin [--rounds 3] [--session-timeout-ms 6000] [--json FILE]

Not a test: no thresholds, the numbers are printed (and written with --json).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import orjson
from confluent_kafka import Producer

from benchmarks.procs import runner_env, start_run, stop_run, topic_set
from streams.runtime.runner import ensure_topics
from streams.tools.broker import EmbeddedBroker, free_port

PARTITIONS = 6


def _feed(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """About 200 readings/s over 60 meters until ``stop``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    i = 0
    while not stop.is_set():
        now_ms = int(time.time() * 1000)
        for m in range(60):
            value = {"meter_id": f"m{m}", "ts": now_ms - 60_000 + i, "kw": 1.0 + (i % 9) / 10}
            producer.produce(topic, orjson.dumps(value), f"m{m}".encode())
        producer.poll(0)
        i += 1
        stop.wait(0.3)
    producer.flush(10)


def _first_batch_s(port: int, spawned: float, timeout_s: float = 120.0) -> float | None:
    """Seconds from ``spawned`` until /health reports a completed batch (None on timeout)."""
    deadline = spawned + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:  # noqa: S310
                if json.loads(r.read()).get("batches", 0) > 0:
                    return time.monotonic() - spawned
        except OSError:
            pass
        time.sleep(0.05)
    return None


def measure(bootstrap: str, static: bool, session_ms: int, tag: str) -> dict[str, float | None]:
    topics = topic_set(f"rejoin-{tag}")
    group = f"rejoin-{tag}"
    port = free_port()
    env = runner_env(
        bootstrap,
        topics,
        group,
        None,
        PARTITIONS,
        GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS=str(session_ms),
        GRIDSTREAM_KAFKA__STATIC_MEMBERSHIP=str(static).lower(),
        GRIDSTREAM_HTTP_PORT=str(port),
    )
    from streams.config import KafkaSettings, Settings

    ensure_topics(
        Settings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap, partitions=PARTITIONS), topics=topics
        )
    )
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(bootstrap, topics.meter, stop), daemon=True)
    feeder.start()
    try:
        spawned = time.monotonic()
        first = start_run(env)
        cold = _first_batch_s(port, spawned)
        time.sleep(3.0)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        spawned = time.monotonic()
        second = start_run(env)
        after_kill = _first_batch_s(port, spawned)
        stop_run(second)
        stop_run(first)
    finally:
        stop.set()
        feeder.join(15)
    return {"first_start_s": cold, "after_kill_9_s": after_kill}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results: dict[str, list[dict[str, float | None]]] = {"static": [], "dynamic": []}
    with EmbeddedBroker() as broker:
        for r in range(args.rounds):
            for mode in ("static", "dynamic"):
                res = measure(
                    broker.bootstrap, mode == "static", args.session_timeout_ms, f"{mode}-{r}"
                )
                results[mode].append(res)
                print(f"{mode:8} round {r}: {res}", flush=True)
    summary = {
        mode: {
            key: sorted(x[key] for x in runs if x[key] is not None)
            for key in ("first_start_s", "after_kill_9_s")
        }
        for mode, runs in results.items()
    }
    out = {"session_timeout_ms": args.session_timeout_ms, "rounds": results, "sorted": summary}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
