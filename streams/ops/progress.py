"""Progress of the long local commands (train, backtest, simulate, bench) on stderr.

A ``rich`` progress display when stderr is a terminal and ``--quiet`` is not given; otherwise
nothing at all, so logs, pipes and CI output stay clean and stdout keeps only the results.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _Rich

T = TypeVar("T")


def wanted(quiet: bool) -> bool:
    """Show progress: not asked to be quiet, and a person is watching stderr."""
    return not quiet and sys.stderr.isatty()


class Progress:
    """``with Progress(enabled) as p: t = p.task("reading", total=n); p.advance(t, k)``.

    Disabled, every call does nothing, so callers never branch on it.
    """

    def __init__(self, enabled: bool) -> None:
        self._rich: _Rich | None = None
        if enabled:
            self._rich = _Rich(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()

    def task(self, description: str, total: float | None = None) -> int:
        """A new line of progress; ``total`` None shows a spinner with the elapsed time."""
        return self._rich.add_task(description, total=total) if self._rich is not None else 0

    def advance(self, task: int, amount: float = 1.0, description: str | None = None) -> None:
        if self._rich is not None:
            self._rich.update(task, advance=amount, description=description)

    def update(self, task: int, *, completed: float | None = None,
               description: str | None = None) -> None:
        if self._rich is not None:
            self._rich.update(task, completed=completed, description=description)

    def finish(self, task: int) -> None:
        """Mark a task done (a spinner task stops spinning)."""
        if self._rich is not None:
            t = self._rich.tasks[task] if task < len(self._rich.tasks) else None
            total = (t.total if t is not None and t.total is not None else 1)
            self._rich.update(task, total=total, completed=total)

    def track(self, items: Iterable[T], description: str, total: int | None = None
              ) -> Iterator[T]:
        """Yield ``items``, advancing one step per item."""
        task = self.task(description, total)
        for item in items:
            yield item
            self.advance(task)
        self.finish(task)
