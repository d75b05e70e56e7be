"""Logging set-up: human text or JSON lines, level from configuration, secrets blanked out.

What gridstream logs at INFO and above: lifecycle (start, assignment, stop), state changes of
dependencies (Kafka unreachable/back, outputs failing/recovered) and errors with their context
(topic, partition, table) - never record payloads, never credentials. librdkafka's own messages
arrive through the ``gridstream.kafka`` logger. As a last line of defence, ``configure`` takes the
configured secret values and replaces them with ``***`` wherever a message would contain them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is emitted.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
# Chatty at INFO in a long-running service; their warnings still come through.
QUIET_LOGGERS = ("urllib3", "clickhouse_connect", "chdb")


class JsonLines(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC), level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC)
        doc: dict[str, object] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class Redact(logging.Filter):
    """Replaces secret values in the rendered message (and its args) with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # longest first, so a secret that contains another is blanked whole
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure(level: str = "INFO", fmt: str = "text", redact: Iterable[str] = ()) -> None:
    """Route every logger to stderr in ``fmt`` ("text" or "json") at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(Redact(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if logging.getLevelName(level) >= logging.INFO:  # DEBUG keeps them verbose
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
