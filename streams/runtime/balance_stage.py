"""The energy balance in a live run: where meter and transformer partitions meet.

Producers key readings by their own id, so a meter and its transformer land on unrelated
partitions. The balance meets them by a second stage through an internal topic keyed by the
transformer, as Kafka Streams repartitions before a join:

1. **repartition** (group ``<group>.balance-repartition``, input topics): each decoded meter
   reading is forwarded, bytes unchanged, to ``balance.internal_topic`` keyed by its transformer
   at the reading's time (``grid.topology``, read whole by every worker: ``TopologyFeed``); a
   transformer's own SCADA reading is keyed by itself. Records the decoder rejects are counted
   here and dead-lettered by the main pipeline; a meter without a transformer is counted.
   Offsets are committed after the forwarded records are acknowledged (at-least-once).
2. **balance** (group ``<group>.balance``, the internal topic): one ``BalanceCore`` per
   partition, owning the transformers whose key hashes to it. Outputs: ``balance`` events on the
   anomaly topic and in ``anomalies``, the closed intervals in ``energy_balance``; then the
   offsets are committed, then (every ``checkpoint_every`` batches) each core is checkpointed
   at its committed position.

Why this holds under crashes: the core keeps one value per (child, interval) and (parent,
sub-interval), so a reading forwarded twice overwrites itself; intervals close where the
watermark passes them in log order (``BalanceCore.process``), so replaying the internal topic
from a checkpoint rebuilds the same state whatever the batch cuts; and outputs of replayed
records (below the committed offset) are dropped because they were published before. Event ids
and ClickHouse keys are deterministic, so an output written twice is one row.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from models.balance import BalanceCore, BalanceOutput, BalanceParams
from models.balance_state import BalanceSnapshotError
from schemas.batch import AnomalyRecord, DeadLetterRecord, ForecastBatch
from schemas.decode import METER, SCADA, decode_batch
from sinks.clickhouse import ClickHouseSink
from sinks.encode import OutRecord, encode_anomalies, encode_dead_letters
from sinks.partitioner import partition_for
from sinks.topics import TopicSink
from streams.config import Settings
from streams.runtime.balance_pace import Pacer
from streams.runtime.failpoints import Failpoints
from streams.runtime.topology_feed import TopologyFeed

log = logging.getLogger("gridstream.balance")
CONTRACT = "gridstream.contract"  # header of a forwarded reading: which decoder reads it


class BalanceStage:
    """Both stages in one thread, beside ``gridstream run``'s engine."""

    def __init__(
        self,
        settings: Settings,
        sink: ClickHouseSink | None = None,
        *,
        failpoints: Failpoints | None = None,
        clock: Callable[[], float] = time.time,
        metric: Callable[[str, int], None] | None = None,
    ) -> None:
        """``metric(what, n)`` also exports each count (``gridstream_balance_records_total``)."""
        self.settings = settings
        b = settings.balance
        self.params = BalanceParams(interval_s=b.interval_s, lateness_s=b.lateness_s)
        self.feed = TopologyFeed(settings)
        self.sink = sink
        self.failpoints = failpoints or Failpoints({})
        self.clock = clock
        self.cores: dict[int, BalanceCore] = {}
        self.positions: dict[int, int] = {}
        self.replay_until: dict[int, int] = {}
        self.partitions = 1
        self.counters: Counter[str] = Counter()
        self.metric = metric
        state = settings.processing.state_dir
        self.ckpt_dir = Path(state) / f"{settings.kafka.group_id}.balance" if state else None
        self._producer: TopicSink | None = None
        self._batches = 0
        budget = max(b.interval_s, b.lateness_s // 4) * 1000
        self.pacer = Pacer(budget, self._count)

    def _count(self, what: str, n: int) -> None:
        self.counters[what] += n
        if self.metric is not None and n:
            self.metric(what, n)

    # -- clients -----------------------------------------------------------------------------
    def _consumer(self, suffix: str) -> Consumer:
        conf = self.settings.kafka.consumer_config()
        conf["group.id"] = f"{conf['group.id']}.{suffix}"
        if "group.instance.id" in conf:
            conf["group.instance.id"] = f"{conf['group.instance.id']}.{suffix}"
        return Consumer(conf)

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> Counter[str]:
        """Run both stages until ``stop`` (or ``idle_exit_s`` without input); the counters."""
        t, b = self.settings.topics, self.settings.balance
        if self.settings.kafka.processing_guarantee == "exactly_once":
            log.warning("balance outputs are at least once (ClickHouse counts them once)")
        partition_for(b"", 1, self.settings.kafka.partitioner)  # refuses a random partitioner
        if self.settings.kafka.create_topics:
            ensure_balance_topics(self.settings)
        self._producer = TopicSink(Producer(self.settings.kafka.producer_config()))
        self._dead(self.feed.catch_up())
        log.info("balance: topology of %d children", len(self.feed.topology))
        repartition, balance = self._consumer("balance-repartition"), self._consumer("balance")
        reset = self.pacer.reset
        repartition.subscribe([t.meter, t.scada], on_assign=reset, on_revoke=reset)
        balance.subscribe([b.internal_topic], on_assign=self._on_assign, on_revoke=self._revoke)
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                self._dead(self.feed.poll())
                if self._repartition(repartition) + self._balance(balance):
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
        finally:
            repartition.close()
            balance.close()
            self.feed.close()
        return self.counters

    def _dead(self, letters: list[DeadLetterRecord]) -> None:
        if letters and self._producer is not None:
            self._producer.publish(
                [(self.settings.topics.dead_letters, encode_dead_letters(letters))]
            )
            if self.sink is not None:
                self.sink.write(ForecastBatch.empty(), [], letters, int(self.clock() * 1000))
            self._count("topology_dead_letters", len(letters))

    # -- stage 1 -----------------------------------------------------------------------------
    def _decode(self, msgs: list, contracts: list[str]):  # noqa: ANN202 - a DecodedBatch
        p = self.settings.processing
        return decode_batch(
            [m.value() for m in msgs],
            contracts,
            now_ms=int(self.clock() * 1000),
            max_age_ms=p.max_age_s * 1000,
            max_future_ms=p.max_future_s * 1000,
        )

    def _repartition(self, consumer: Consumer) -> int:
        """Forward one batch of readings keyed by transformer; commit once acknowledged."""
        k = self.settings.kafka
        fresh = [m for m in consumer.consume(k.batch_size, 0.05) if m.error() is None]
        msgs = self.pacer.unheld(fresh)
        if not msgs:
            self.pacer.pace(consumer, [], empty=not fresh)
            return 0
        contracts = [METER if m.topic() == self.settings.topics.meter else SCADA for m in msgs]
        decoded = self._decode(msgs, contracts)
        r, topo = decoded.readings, self.feed.topology
        times = dict(zip(r.src_index.tolist(), r.ts_ms.tolist(), strict=True))
        held = self.pacer.pace(consumer, msgs, times, empty=not fresh)
        self._count("balance_undecodable", len(decoded.rejections))
        out = []
        rows = zip(r.entity, r.kind, r.ts_ms.tolist(), r.src_index.tolist(), strict=True)
        for e, kind, ts, src in rows:
            if kind not in ("meter", "transformer") or held[src]:
                continue
            parent = topo.parent_at(e, ts) if kind == "meter" else e
            if parent is None:
                self._count("balance_unmapped", 1)
                continue
            header = [(CONTRACT, contracts[src].encode())]
            out.append(OutRecord(parent.encode(), msgs[src].value(), header))
        assert self._producer is not None
        self._producer.publish([(self.settings.balance.internal_topic, out)])
        kept = [m for m, h in zip(msgs, held, strict=True) if not h]
        if kept:
            consumer.commit(offsets=_next_offsets(kept), asynchronous=False)
        self._count("balance_forwarded", len(out))
        return len(kept)

    # -- stage 2 -----------------------------------------------------------------------------
    def _balance(self, consumer: Consumer) -> int:
        """Balance one batch of the internal topic, publish, commit, maybe checkpoint."""
        msgs = [m for m in consumer.consume(self.settings.kafka.batch_size, 0.05) if not m.error()]
        if not msgs:
            return 0
        outputs = BalanceOutput()
        for p in sorted({m.partition() for m in msgs}):
            part = [m for m in msgs if m.partition() == p]
            step = self._feed_partition(p, part)
            outputs.rows += step.rows
            outputs.events += step.events
        self.failpoints.hit("after_process")
        self._publish(outputs)
        self.failpoints.hit("before_commit")
        consumer.commit(offsets=_next_offsets(msgs), asynchronous=False)
        self.failpoints.hit("after_commit")
        self._batches += 1
        if self._batches % self.settings.balance.checkpoint_every == 0:
            for p in list(self.cores):
                self._checkpoint(p)
        return len(msgs)

    def _feed_partition(self, p: int, msgs: list) -> BalanceOutput:
        contracts = [dict(m.headers() or []).get(CONTRACT, b"meter").decode() for m in msgs]
        decoded = self._decode(msgs, [c if c in (METER, SCADA) else METER for c in contracts])
        r = decoded.readings
        offsets = np.array([m.offset() for m in msgs], dtype=np.int64)[r.src_index]
        kw = np.where(r.kind == "meter", r.value, r.value * 1000.0)  # SCADA MW -> kW
        core = self.cores.get(p) or self._fresh(p)
        again = offsets < self.replay_until.get(p, -1)
        self._count("balance_replayed", int(again.sum()))
        core.process(r.entity[again], r.kind[again], r.ts_ms[again], kw[again])  # published
        live = ~again
        self._count("balance_consumed", int(live.sum()))
        out = core.process(r.entity[live], r.kind[live], r.ts_ms[live], kw[live])
        self._count("balance_late", out.late)
        self.positions[p] = int(msgs[-1].offset()) + 1
        return out

    def _publish(self, out: BalanceOutput) -> None:
        """Events to Kafka, then events and rows to ClickHouse (at-least-once order)."""
        events: list[AnomalyRecord] = out.events
        assert self._producer is not None
        if events:
            self._producer.publish([(self.settings.topics.anomalies, encode_anomalies(events))])
        self.failpoints.hit("between_outputs")
        if self.sink is not None:
            now_ms = int(self.clock() * 1000)
            self.sink.write_balance(out.rows, now_ms)
            if events:
                self.sink.write(ForecastBatch.empty(), events, [], now_ms)
        self._count("balance_events", len(events))
        self._count("balance_rows", sum(len(r) for r in out.rows))

    # -- partitions and their state ----------------------------------------------------------
    def _owns(self, p: int):  # noqa: ANN202 - a predicate on parent ids
        n, partitioner = self.partitions, self.settings.kafka.partitioner
        return lambda parent: partition_for(parent.encode(), n, partitioner) == p

    def _fresh(self, p: int) -> BalanceCore:
        self.cores[p] = BalanceCore(self.params, self.feed.topology, self._owns(p))
        return self.cores[p]

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        topic = self.settings.balance.internal_topic
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        self.partitions = len(meta.partitions)
        committed = consumer.committed(parts, timeout=30) if parts else []
        for tp in committed:
            p, done = tp.partition, tp.offset if tp.offset >= 0 else -1
            position = self._restore(p)
            self.replay_until[p] = done
            if position >= 0:
                tp.offset = position  # replay from the checkpoint to the commit
            elif done >= 0:
                tp.offset = OFFSET_BEGINNING  # no state: rebuild from the start of the log
        # cooperative protocols add partitions to the assignment, eager ones replace it
        if self.settings.kafka.assignment_strategy == "cooperative-sticky":
            consumer.incremental_assign(committed)
        else:
            consumer.assign(committed)
        log.info(
            "balance: assigned %s, replaying below %s",
            [tp.partition for tp in parts],
            self.replay_until,
        )

    def _revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            self._checkpoint(tp.partition)
            self.cores.pop(tp.partition, None)

    def _path(self, p: int) -> Path | None:
        if self.ckpt_dir is None:
            return None
        return self.ckpt_dir / f"{self.settings.balance.internal_topic}.{p}.npz"

    def _checkpoint(self, p: int) -> None:
        """Write partition ``p``'s core at its committed position (temp file, fsync, rename)."""
        path, core, position = self._path(p), self.cores.get(p), self.positions.get(p, -1)
        if path is None or core is None or position < 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(core.dumps(position=position))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._count("balance_checkpoints", 1)

    def _restore(self, p: int) -> int:
        """Partition ``p``'s core from its checkpoint (its position), or a fresh one (-1)."""
        path = self._path(p)
        if path is not None and path.is_file():
            try:
                core = BalanceCore.loads(path.read_bytes(), self.feed.topology, self._owns(p))
                self.cores[p] = core
                self.positions[p] = int(core.extra.get("position", -1))
                self._count("balance_restores", 1)
                return self.positions[p]
            except BalanceSnapshotError as exc:
                log.warning("balance checkpoint %s unusable (%s): rebuilding by replay", path, exc)
        self._fresh(p)
        self.positions[p] = -1
        return -1


def ensure_balance_topics(settings: Settings) -> None:
    """Create the internal topic and the (compacted) topology topic if they are missing."""
    k, b = settings.kafka, settings.balance
    admin = AdminClient(k.client_config())
    existing = set(admin.list_topics(timeout=10).topics)
    compact = {"cleanup.policy": "compact"}
    wanted = [(b.internal_topic, {}), (b.topology_topic, compact)]
    new = [  # replication -1: the broker's default, as for the other topics
        NewTopic(
            name, k.partitions, k.replication_factor or -1, config={**k.new_topic_config(), **conf}
        )
        for name, conf in wanted
        if name not in existing
    ]
    for fut in (admin.create_topics(new) if new else {}).values():
        try:
            fut.result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - another worker may have created it first
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise


def start_in_thread(
    settings: Settings,
    sink: ClickHouseSink | None,
    stop: threading.Event,
    failpoints: Failpoints | None = None,
    metric: Callable[[str, int], None] | None = None,
    retry_s: float = 5.0,
) -> threading.Thread:
    """``gridstream run`` with ``balance.enabled``: the stage beside the engine, same stop.

    A stage that fails (broker or ClickHouse down past the sinks' retries) is logged and built
    again after ``retry_s``: it resumes from its checkpoints and committed offsets, as after a
    crash, while the engine goes on."""

    def supervise() -> None:
        while not stop.is_set():
            try:
                BalanceStage(settings, sink, failpoints=failpoints, metric=metric).run(stop)
            except Exception:  # noqa: BLE001 - any failure: restart from committed state
                log.exception("balance stage failed; restarting in %.0f s", retry_s)
                if metric is not None:
                    metric("stage_restarts", 1)
                stop.wait(retry_s)

    thread = threading.Thread(target=supervise, name="balance", daemon=True)
    thread.start()
    return thread


def _next_offsets(msgs: list) -> list[TopicPartition]:
    """The offset after the last consumed record of each partition, to commit."""
    last: dict[tuple[str, int], int] = {}
    for m in msgs:
        key = (m.topic(), m.partition())
        last[key] = max(last.get(key, -1), m.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
