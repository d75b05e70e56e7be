"""``gridstream run --engine faust`` against the native runtime: same readings, same records out.

The faust engine runs as a user runs it (a separate process, real broker, its own chDB path); the
native runtime runs in this process on the same input topics under another group and other
output topics. One input partition, so both see the readings in the same order: the global river
model learns in arrival order, and with several partitions the interleaving is up to the client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from models.processor import GridProcessor
from streams.config import Settings
from streams.ops.report import BatchReport
from streams.runtime.runner import StreamRunner, ensure_topics
from tests.integration.conftest import RunnerThread, make_settings
from tests.integration.helpers import committed, end_offsets, headers, produce
from tests.integration.helpers import read_all as _read_all

# slow (make test-all): a faust worker and a native run over the same input, about 40 s
pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("faust")

STEP_MS = 900_000
GRIDSTREAM = [sys.executable, "-m", "streams.cli"]
BAD = {
    b"{not json": "malformed_json",
    b"[1, 2, 3]": "not_an_object",
    b'{"meter_id": "m9", "ts": 1}': "missing_field",
    b'{"meter_id": "m9", "ts": 1, "kw": "12.5"}': "invalid_type",
}


def _workload(now_ms: int) -> list[tuple[bytes, bytes]]:
    """Four meters x 80 readings with a spike and a stuck stretch, bad records in between."""
    start = now_ms - 80 * STEP_MS
    records = []
    for i in range(80):
        for m in range(4):
            kw = 2.0 + 0.5 * m + 0.07 * ((i * 7 + m) % 5)
            if m == 0 and i == 60:
                kw = 30.0
            if m == 1 and 50 <= i < 70:
                kw = 9.99
            doc = {"meter_id": f"m{m}", "ts": start + i * STEP_MS, "kw": kw, "voltage_v": 230.0}
            records.append((f"m{m}".encode(), orjson.dumps(doc)))
        if i % 20 == 5:
            records.extend((b"m9", raw) for raw in BAD)
    return records


def _settings(bootstrap: str, unique: str, tag: str, tmp: Path) -> Settings:
    """One engine's run: its own group, outputs and database over the shared input topics."""
    return make_settings(bootstrap, unique, tmp / f"chdb-{tag}", partitions=1, tag=tag)


def _env(settings: Settings, tmp: Path) -> dict[str, str]:
    k, t, ch = settings.kafka, settings.topics, settings.clickhouse
    env = {key: v for key, v in os.environ.items() if not key.startswith("GRIDSTREAM_")}
    env.update(
        GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=k.bootstrap_servers,
        GRIDSTREAM_KAFKA__GROUP_ID=k.group_id,
        GRIDSTREAM_KAFKA__PARTITIONS=str(k.partitions),
        GRIDSTREAM_KAFKA__BATCH_SIZE=str(k.batch_size),
        GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS=str(k.session_timeout_ms),
        GRIDSTREAM_TOPICS__METER=t.meter,
        GRIDSTREAM_TOPICS__SCADA=t.scada,
        GRIDSTREAM_TOPICS__FORECASTS=t.forecasts,
        GRIDSTREAM_TOPICS__ANOMALIES=t.anomalies,
        GRIDSTREAM_TOPICS__DEAD_LETTERS=t.dead_letters,
        GRIDSTREAM_CLICKHOUSE__PATH=str(ch.path),
        GRIDSTREAM_CLICKHOUSE__DATABASE=ch.database,
        GRIDSTREAM_HTTP_PORT="0",
    )
    return env


def _run_native(settings: Settings, n: int) -> None:
    stop = threading.Event()
    seen = [0]

    def on_batch(report: BatchReport) -> None:
        seen[0] += report.consumed
        if seen[0] >= n:
            stop.set()

    runner = StreamRunner(settings, GridProcessor(settings.processing.params()), on_batch=on_batch)
    running = RunnerThread(runner, stop=stop)
    running.thread.join(120)  # on_batch stops it once every record is seen
    assert not running.thread.is_alive(), f"native runtime processed {seen[0]} of {n}"
    running.close()


def _run_faust(settings: Settings, tmp: Path) -> str:
    """Run the faust engine until it has committed the whole input, then SIGTERM it."""
    proc = subprocess.Popen(
        [*GRIDSTREAM, "run", "--engine", "faust"],
        env=_env(settings, tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
    )
    t = settings.topics
    want = end_offsets(settings.kafka.bootstrap_servers, t.meter, 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if committed(settings.kafka.bootstrap_servers, settings.kafka.group_id, t.meter, 1) == want:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return err


def _docs(bootstrap: str, topic: str, drop: tuple[str, ...] = ()) -> list[tuple[bytes, dict]]:
    out = []
    for m in _read_all(bootstrap, topic, idle_s=2.0):
        doc = orjson.loads(m.value())
        for key in drop:
            doc.pop(key, None)
        out.append((m.key(), doc))
    return sorted(out, key=lambda kv: orjson.dumps(kv[1], option=orjson.OPT_SORT_KEYS))


def test_faust_engine_outputs_equal_native(bootstrap: str, unique: str, tmp_path: Path) -> None:
    records = _workload(int(time.time() * 1000))
    native = _settings(bootstrap, unique, "native", tmp_path)
    faust_ = _settings(bootstrap, unique, "faust", tmp_path)
    ensure_topics(native)
    ensure_topics(faust_)
    produce(bootstrap, native.topics.meter, records)

    _run_native(native, len(records))
    _run_faust(faust_, tmp_path)

    a, b = native.topics, faust_.topics
    forecasts = _docs(bootstrap, a.forecasts)
    assert len(forecasts) > 500
    assert _docs(bootstrap, b.forecasts) == forecasts
    anomalies = _docs(bootstrap, a.anomalies, drop=("detected_at",))  # wall clock
    assert {d["entity_id"] for _, d in anomalies} >= {"m0"}  # the spike at least
    assert _docs(bootstrap, b.anomalies, drop=("detected_at",)) == anomalies

    def dead(topic: str) -> list[tuple[bytes, bytes, str, str]]:
        return sorted(
            (m.key(), m.value(), h["__connect.errors.exception.class.name"].decode(),
             h["__connect.errors.offset"].decode())
            for m in _read_all(bootstrap, topic, idle_s=2.0)
            for h in [headers(m)]
        )

    dead_faust = dead(b.dead_letters)
    assert dead_faust == dead(a.dead_letters)
    assert sorted(cls for _, _, cls, _ in dead_faust) == sorted(list(BAD.values()) * 4)
    assert {raw for _, raw, _, _ in dead_faust} == set(BAD)  # original bytes, unchanged

    # ClickHouse got the same rows through the same sink (in the engine's own chDB path)
    sql = (
        "SELECT (SELECT count() FROM forecasts FINAL), (SELECT count() FROM anomalies FINAL), "
        "(SELECT count() FROM dead_letters FINAL)"
    )
    query = subprocess.run(
        [*GRIDSTREAM, "query", sql],
        env=_env(faust_, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert query.returncode == 0, query.stderr[-2000:]
    counts = query.stdout.splitlines()[2].split()
    assert [int(c) for c in counts] == [len(forecasts), len(anomalies), len(dead_faust)]
