"""Crash points for fault-injection tests: the process kills itself at a named point.

``GRIDSTREAM_FAILPOINTS="between_outputs=0.1,before_commit=0.1"`` arms points with the
probability of dying each time the loop passes them (``GRIDSTREAM_FAILPOINTS_SEED`` makes the
draws repeatable); the CLI reads both (``streams.cli.failpoints_from_env``) and passes them in.
The kill is SIGKILL, as from the kernel's OOM killer or a lost machine: no
``finally`` runs, nothing is flushed. Unset, a point costs one dict lookup per batch.

The points, in the order a batch passes them:
- ``after_process``: state updated, nothing written (mid-batch);
- ``between_outputs``: one sink written, the other not yet (``streams.runtime.delivery``:
  at-least-once publishes to Kafka first, then ClickHouse; exactly-once writes ClickHouse, then
  commits the transaction);
- ``before_commit``: everything written and acknowledged, offsets not committed;
- ``after_commit``: committed, checkpoint not yet written.
"""

from __future__ import annotations

import os
import random
import signal

POINTS = ("after_process", "between_outputs", "before_commit", "after_commit")


class FailpointError(ValueError):
    """GRIDSTREAM_FAILPOINTS names a point that does not exist or a bad probability."""


def parse(spec: str) -> dict[str, float]:
    armed: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, prob = item.partition("=")
        if name not in POINTS:
            raise FailpointError(f"GRIDSTREAM_FAILPOINTS: unknown point {name!r}; known: {POINTS}")
        try:
            p = float(prob) if prob else 1.0
        except ValueError:
            raise FailpointError(f"GRIDSTREAM_FAILPOINTS: {item!r}: bad probability") from None
        if not 0.0 <= p <= 1.0:
            raise FailpointError(f"GRIDSTREAM_FAILPOINTS: {item!r}: probability not in [0, 1]")
        armed[name] = p
    return armed


class Failpoints:
    def __init__(self, armed: dict[str, float], seed: int | None = None) -> None:
        self.armed = armed
        self._rng = random.Random(seed)  # noqa: S311 - fault injection, not security

    def hit(self, name: str) -> None:
        p = self.armed.get(name)
        if p is not None and self._rng.random() < p:
            os.write(2, f"gridstream: failpoint {name}: SIGKILL\n".encode())  # for the test log
            os.kill(os.getpid(), signal.SIGKILL)
