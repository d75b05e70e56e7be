"""Errors of the output adapters, under the project's root error.

The runtime needs one decision from a sink error: retry the batch later (``retryable``: the offsets
stay uncommitted, partitions pause) or stop and tell an operator. Messages name the table or
backend and carry a short cause, never a batch's payload or a password.
"""

from __future__ import annotations

from typing import ClassVar

from schemas.exceptions import GridstreamError


class SinkError(GridstreamError):
    """An output could not be written or read; ``table`` names the table when there is one."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, table: str | None = None) -> None:
        super().__init__(message)
        self.table = table


class SinkUnavailable(SinkError):
    """A transient outage (connection refused, timeout, too many parts): retry the same batch."""

    retryable = True


class QueryFailed(SinkError):
    """The engine rejected a statement or an insert (bad SQL, wrong types, unknown table)."""


class SchemaMismatch(SinkError):
    """A table exists with columns, engine or sorting key other than the ones gridstream writes."""


class EmbeddedInUse(SinkError):
    """The embedded ClickHouse data directory is held by another process or another path."""


class SinkConfigError(SinkError, ValueError):
    """A sink was configured with an unusable value (database name, path)."""
