"""Process-level concerns of ``gridstream run``: N worker processes, and the GC policy of each.

``gridstream run --workers N`` starts N ordinary ``gridstream run`` processes in one consumer
group, so Kafka spreads the input partitions over them (more workers than partitions leaves the
rest idle). Processes, not threads: the core is Python and a process is the unit that gets a core
of its own. The parent only supervises:
- SIGTERM/SIGINT are passed on as SIGTERM; each worker finishes its batch, commits and leaves the
  group, and the parent exits 0 when every worker did;
- a worker that exits on its own (a crash, a fatal error) is reported with its pid and status,
  the others are stopped the same graceful way, and the parent exits with that worker's status
  (1 if it died of a signal). No restarts: a crash-looping worker would otherwise hide behind a
  healthy-looking parent, and the supervisor that runs ``gridstream`` (systemd, Kubernetes,
  compose ``restart:``) restarts the whole at once and counts the restarts.
- a worker also gets SIGTERM if the parent dies without passing it on (Linux parent-death signal).

Embedded chDB holds its data directory for one process, so N > 1 with the ``chdb`` backend is
refused at start; use a ClickHouse server (``GRIDSTREAM_CLICKHOUSE__BACKEND=server``) or none.
Worker ``i`` serves HTTP on ``GRIDSTREAM_HTTP_PORT + i`` (each has its own /metrics and /health).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from streams.config import ConfigError, Settings

log = logging.getLogger("gridstream.workers")

# Cyclic GC: the hot path allocates many short-lived containers (decoded JSON, output documents)
# and almost no reference cycles, so a generation-0 collection every 700 allocations buys nothing
# but its cost; start-up objects (modules, models) are moved out of the collector's sight.
GC_GEN0_THRESHOLD = 50_000


def apply_gc_policy() -> None:
    """Freeze what start-up allocated and collect generation 0 less often (measured: benchmarks)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


@contextlib.contextmanager
def gc_policy() -> Iterator[None]:
    """``apply_gc_policy`` for the processing loop, undone after it.

    Undoing matters: objects left frozen are skipped at interpreter exit, and embedded chDB's
    session then tears down after the runtime it needs (the process died with SIGSEGV on exit).
    """
    before = gc.get_threshold()
    apply_gc_policy()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse a worker count the configuration cannot serve, naming the setting at fault."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and settings.clickhouse.backend == "chdb":
        raise ConfigError(
            f"--workers {workers} with GRIDSTREAM_CLICKHOUSE__BACKEND=chdb: embedded ClickHouse "
            f"({settings.clickhouse.path}) can be opened by one process only; use a ClickHouse "
            "server (GRIDSTREAM_CLICKHOUSE__BACKEND=server) or none, or run one worker"
        )


def tag_logs(index: int) -> None:
    """Mark every log line of this process with its worker number (text prefix, JSON field)."""

    class _Worker(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.worker = index
            return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(_Worker())
        fmt = handler.formatter
        if fmt is not None and type(fmt) is logging.Formatter:  # the text format
            handler.setFormatter(
                logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [worker {index}]: "
                                  "%(message)s")
            )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_command(index: int, workers: int, http_port: int, config: str | None) -> list[str]:
    """The command line of worker ``index``: ``gridstream run`` with its own HTTP port."""
    port = http_port + index if http_port else 0
    return [
        sys.executable, "-m", "streams.cli", *(["--config", config] if config else []), "run",
        "--http-port", str(port), "--worker-index", str(index), "--workers", str(workers),
    ]


def run_workers(
    settings: Settings,
    workers: int,
    config: str | None = None,
    *,
    stop_timeout_s: float = 120.0,
) -> int:
    """Start ``workers`` processes and supervise them until a signal or a worker's exit."""
    check_workers(settings, workers)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        log.info("received %s: stopping %d workers", signal.Signals(signum).name, workers)
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(workers):
        procs.append(
            subprocess.Popen(
                worker_command(i, workers, settings.http_port, config),
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        )
        log.info("worker %d started: pid %d", i, procs[-1].pid)
    failed: int | None = None
    while not stopping:
        for i, proc in enumerate(procs):
            status = proc.poll()
            if status is not None and not stopping:
                log.error(
                    "worker %d (pid %d) exited with status %d; stopping the others",
                    i, proc.pid, status,
                )
                failed = status if status > 0 else 1
                stopping = True
        time.sleep(0.2)
    return _stop_all(procs, stop_timeout_s, failed)


def _stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float, failed: int | None
              ) -> int:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for i, proc in enumerate(procs):
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d (pid %d) did not stop in %.0f s: killed", i, proc.pid, timeout_s)
            proc.kill()
            proc.wait()
            failed = failed or 1
    if failed is None:
        bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        if bad:
            log.error("workers that did not exit cleanly: %s", bad)
            failed = bad[0][1] if bad[0][1] > 0 else 1
    log.info("all workers stopped")
    return failed or 0
