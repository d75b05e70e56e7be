"""Helpers for benchmark runs that need `gridstream run` as a real, separate process.

Latency and scaling are measured against the command an operator runs, not a thread in the
bench process: its GC policy, its own GIL and its own chDB are part of what is measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from streams.config import TopicSettings


def topic_set(prefix: str) -> TopicSettings:
    """Fresh input and output topics for one measurement."""
    return TopicSettings(
        meter=f"{prefix}.meter",
        scada=f"{prefix}.scada",
        forecasts=f"{prefix}.forecasts",
        anomalies=f"{prefix}.anomalies",
        dead_letters=f"{prefix}.deadletter",
    )


def runner_env(
    bootstrap: str,
    topics: TopicSettings,
    group: str,
    chdb: Path | None,
    partitions: int,
    **extra: str,
) -> dict[str, str]:
    """Environment of a `gridstream run` child: ours only, nothing inherited from GRIDSTREAM_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDSTREAM_")}
    env.update(
        {
            "GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "GRIDSTREAM_KAFKA__GROUP_ID": group,
            "GRIDSTREAM_KAFKA__PARTITIONS": str(partitions),
            "GRIDSTREAM_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "GRIDSTREAM_HTTP_PORT": "0",
            "GRIDSTREAM_LOG_LEVEL": "WARNING",
            "GRIDSTREAM_TOPICS__METER": topics.meter,
            "GRIDSTREAM_TOPICS__SCADA": topics.scada,
            "GRIDSTREAM_TOPICS__FORECASTS": topics.forecasts,
            "GRIDSTREAM_TOPICS__ANOMALIES": topics.anomalies,
            "GRIDSTREAM_TOPICS__DEAD_LETTERS": topics.dead_letters,
        }
    )
    if chdb is None:
        env["GRIDSTREAM_CLICKHOUSE__BACKEND"] = "none"
    else:
        env["GRIDSTREAM_CLICKHOUSE__PATH"] = str(chdb)
        env["GRIDSTREAM_CLICKHOUSE__DATABASE"] = "bench"
    env.update(extra)
    return env


def start_run(env: dict[str, str], args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """`gridstream run` (plus ``args``) as a child process; stderr goes to a temporary file."""
    root = Path(__file__).resolve().parent.parent
    log = tempfile.NamedTemporaryFile(prefix="gridstream-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", *args],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop_run(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> tuple[int, str]:
    """SIGTERM, wait, return (exit status, the tail of its log)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    tail = log.read()[-3000:].decode(errors="replace")
    log.close()
    os.unlink(log.name)
    return proc.returncode, tail


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def tree_rss_mb(pid: int) -> float | None:
    """RSS of a process plus its direct children (``gridstream run --workers N``)."""
    total = rss_mb(pid)
    if total is None:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(rss_mb(int(c)) or 0.0 for c in children)


class RssSampler:
    """Samples a process's RSS every ``every_s`` in a thread: (seconds since start, MB)."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.every_s):
            mb = tree_rss_mb(self.pid)
            if mb is None:
                return
            self.samples.append((time.monotonic() - start, mb))
