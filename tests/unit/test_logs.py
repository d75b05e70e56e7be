"""JSON log lines and secret redaction."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest

from streams.ops.logs import configure


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_extras_and_utc_time(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("INFO", "json")
    logging.getLogger("gridstream.test").info(
        "assigned %d partitions", 3, extra={"topic": "meter", "partition": 2}
    )
    logging.getLogger("gridstream.test").debug("not at INFO")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    doc = orjson.loads(lines[0])
    assert doc["message"] == "assigned 3 partitions"
    assert doc["level"] == "INFO" and doc["logger"] == "gridstream.test"
    assert doc["topic"] == "meter" and doc["partition"] == 2
    assert doc["ts"].endswith("Z")
    assert datetime.fromisoformat(doc["ts"]).utcoffset().total_seconds() == 0


def test_configured_secrets_never_reach_the_output(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("DEBUG", "text", redact=["s3cr3t-pw", ""])
    log = logging.getLogger("gridstream.test")
    log.warning("connect failed for user x password=%s", "s3cr3t-pw")
    log.error("url http://u:s3cr3t-pw@host")
    err = capsys.readouterr().err
    assert "s3cr3t-pw" not in err
    assert err.count("***") == 2
