"""The demo's energy balance: a grid that conserves energy, balanced live, and a summary line.

The main demo's simulator has each meter stand for many customers, so its meters do not add up
to their assets; this part runs ``streams.sim.balance`` instead (transformers with one-customer
meters, thefts and mis-mappings labelled) on its own two reading topics, publishes its topology
to ``grid.topology``, and runs the balance stage (``streams.runtime.balance_stage``) on them, as
``gridstream run`` does with ``GRIDSTREAM_BALANCE__ENABLED=true``. Readings go out a few hours of
simulated time at a time, each batch once the stage has forwarded the one before, so a backfill
of days arrives roughly in time order, as it would live.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from confluent_kafka import Producer

from schemas.batch import AnomalyRecord
from sinks.clickhouse import ClickHouseSink
from streams.config import BalanceSettings, Settings
from streams.runtime.balance_stage import BalanceStage, ensure_balance_topics
from streams.runtime.runner import ensure_topics
from streams.sim.balance import BalanceSim, BalanceSimConfig, encode, encode_topology

DAY_MS = 86_400_000
CHUNK = 12  # intervals produced at a time (three hours)


def balance_settings(settings: Settings) -> Settings:
    """The demo's settings with the balance on, on reading topics of its own."""
    t = settings.topics
    topics = t.model_copy(update={"meter": f"{t.meter}.balance", "scada": f"{t.scada}.balance"})
    balance = BalanceSettings(enabled=True, lateness_s=6 * 3600)
    return settings.model_copy(update={"topics": topics, "balance": balance})


class BalanceDemo:
    """A conserving grid of ``transformers`` over ``days`` up to ``now_ms``, balanced live."""

    def __init__(
        self,
        settings: Settings,
        sink: ClickHouseSink | None,
        now_ms: int,
        days: int = 9,
        transformers: int = 12,
    ) -> None:
        self.settings = balance_settings(settings)
        start = (now_ms - days * DAY_MS) // DAY_MS * DAY_MS
        cfg = BalanceSimConfig(
            transformers=transformers,
            days=days,
            seed=11,
            case_share=0.5,
            cases=("theft", "mismap", "remap"),
            start_day_min=5.0,
        )
        self.sim = BalanceSim(cfg, start_ms=start)
        self.stage = BalanceStage(self.settings, sink)
        self.stop = threading.Event()
        self.events: list[AnomalyRecord] = []
        self._threads: list[threading.Thread] = []
        self.error: list[BaseException] = []

    def start(self) -> None:
        ensure_topics(self.settings)
        ensure_balance_topics(self.settings)
        producer = Producer({"bootstrap.servers": self.settings.kafka.bootstrap_servers})
        for key, value in encode_topology(self.sim.topology()):
            producer.produce(self.settings.balance.topology_topic, value, key)
        producer.flush(30)
        self._spawn(self._stage, "balance")
        self._spawn(lambda: self._produce(producer), "balance-simulator")

    def _spawn(self, target: Callable[[], object], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported by ``finish``
                self.error.append(exc)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _stage(self) -> None:
        self.stage.run(self.stop)

    def _produce(self, producer: Producer) -> None:
        t, c = self.settings.topics, self.stage.counters
        sent = 0
        for first in range(0, self.sim.config.days * 96, CHUNK):
            for i in range(first, min(first + CHUNK, self.sim.config.days * 96)):
                iv = self.sim.interval(i)
                for key, value in encode_topology(iv.topology):  # re-mappings, as they happen
                    producer.produce(self.settings.balance.topology_topic, value, key)
                meters, scada = encode(iv)
                for topic, records in ((t.meter, meters), (t.scada, scada)):
                    for key, value in records:
                        producer.produce(topic, value, key)
                sent += len(meters) + len(scada)
            producer.flush(30)
            while c["balance_forwarded"] < sent and not self.stop.is_set():
                time.sleep(0.05)

    def finish(self, timeout_s: float) -> None:
        """Let the stage balance what was produced (at most ``timeout_s``), then stop it."""
        c, deadline = self.stage.counters, time.time() + timeout_s
        while time.time() < deadline and not self.error:
            if not self._threads[1].is_alive() and c["balance_consumed"] >= c["balance_forwarded"]:
                break
            time.sleep(0.2)
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    def summary(self, write: Callable[[str], None], rows: list[tuple[str, str]]) -> None:
        """One block: intervals balanced, events, and how the labelled cases fared; ``rows``
        are the balance events' (transformer, explanation) from ``balance_events``."""
        c = self.stage.counters
        write(
            f"\nenergy balance ({len(self.sim.tx_ids)} transformers, "
            f"{len(self.sim.meter_ids)} meters, own topics): {c['balance_rows']:,} "
            f"transformer-intervals balanced, {c['balance_events']} balance events"
        )
        for case in self.sim.cases:
            ranks = [
                (tx, top.index(case.meter) + 1)
                for tx, top in ((tx, _suspects(e)[:3]) for tx, e in rows)
                if tx in (case.transformer, case.other) and case.meter in top
            ]
            if case.kind == "remap":
                verdict = "false alarm naming it" if ranks else "real move: no event names it"
            elif ranks:
                verdict = f"found: event on {ranks[0][0]}, suspect #{ranks[0][1]}"
            else:
                verdict = "not found"
            write(f"  {case.kind:<6} {case.meter} under {case.transformer}: {verdict}")


def balance_events(sink: ClickHouseSink | None) -> list[tuple[str, str]]:
    """(transformer, explanation JSON) of every balance event in ClickHouse, oldest first."""
    if sink is None:
        return []
    return [
        (str(tx), str(ex))
        for tx, ex in sink.query(
            f"SELECT entity_id, explanation FROM {sink.database}.anomalies FINAL "
            "WHERE has(fired, 'balance') ORDER BY ts"
        ).rows
    ]


def _suspects(explanation: str) -> list[str]:
    """The suspect meters of an event's explanation (JSON), best first."""
    features = [str(x.get("feature", "")) for x in json.loads(explanation)]
    return [f[len("suspect:") :] for f in features if f.startswith("suspect:")]
